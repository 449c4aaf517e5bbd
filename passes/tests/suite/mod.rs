mod attention;
mod cost;
mod recurrence;
mod util;
