//! mixc's passes: the schedule (chunk size, tiles, split or fused), and the
//! lowering of mixer graphs to tile programs under a schedule. Device profiles,
//! the roofline cost model and schedule search (issue 6) come next.
//!
//! **Architecture invariant:** passes depend only on `mixc-ir`; they never call
//! a backend or the runtime.

pub mod cost;
pub mod device;
pub mod lower;
pub mod schedule;
pub mod search;
pub mod simplify;

pub use lower::storage::is_kv_cache;
pub use lower::{lower, LowerError};
pub use schedule::{Schedule, Storage};
