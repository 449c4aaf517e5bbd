//! Device profiles, the roofline cost model, schedule search and lowering from the mixer graph to tile programs (issues 3 and 6).
//!
//! Nothing lives here yet: the crate exists so the workspace has its final shape
//! and the dependency direction (ir -> passes -> backends -> runtime) is fixed from the start.
