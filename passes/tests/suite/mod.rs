mod attention;
mod cost;
mod delta;
mod recurrence;
mod util;
