mod attention;
mod cost;
mod delta;
mod generic;
mod library;
mod recurrence;
mod simplify;
mod util;
