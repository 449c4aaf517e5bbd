//! Tile programs to PTX through LLVM 22 and inkwell (issue 5).
//!
//! Nothing lives here yet: the crate exists so the workspace has its final shape
//! and the dependency direction (ir -> passes -> backends -> runtime) is fixed from the start.
