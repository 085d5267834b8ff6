//! Example upstream applications used by `sluice demo` and by the tests: an HTTP echo server
//! (HTTP/1.1 and HTTP/2, WebSocket) and a TCP echo server.

pub mod echo;
pub mod websocket;

pub use echo::{serve_echo, spawn_echo, spawn_tcp_echo};
