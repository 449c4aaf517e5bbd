mod attention;
mod recurrence;
mod util;
