mod golden;
mod identities;
mod model;
mod snapshots;
mod text;
mod tile_text;
mod util;
mod verify;
