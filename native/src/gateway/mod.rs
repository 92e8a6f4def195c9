//! The gateway: the router's data path.
