//! Devices, tensors, kernel caches, mixer execution and the full-model executor (issues 4, 5 and 7).
//!
//! Nothing lives here yet: the crate exists so the workspace has its final shape
//! and the dependency direction (ir -> passes -> backends -> runtime) is fixed from the start.
