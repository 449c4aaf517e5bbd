//! Tile programs to native code through Cranelift (issue 4).
//!
//! Nothing lives here yet: the crate exists so the workspace has its final shape
//! and the dependency direction (ir -> passes -> backends -> runtime) is fixed from the start.
