mod golden;
mod identities;
mod model;
mod snapshots;
mod text;
mod util;
mod verify;
