//! The JSON API: accounts, objects, resume points and operations, in pages.

pub mod http;
pub mod page;
