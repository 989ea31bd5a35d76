//! PUBLISH options are read by the shared codec in the bus crate
//! ([`telegraphy_bus::request`]), so WAMP, `POST /publish`, the publisher
//! library and the CLI accept the same options. This module only keeps the
//! old path working; it goes with the next edit of `lib.rs`.

pub use telegraphy_bus::request::{OptionError, PublishOptions};
