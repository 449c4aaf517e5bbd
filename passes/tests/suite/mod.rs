mod recurrence;
mod util;
