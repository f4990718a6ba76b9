//! The admin interface: a local Unix socket (mode 0600, peer credentials checked) speaking
//! line-delimited JSON. `protocol` is shared with the client in `cli`; `server` accepts
//! connections and checks permissions; `handle` carries out one request on the agent;
//! `view` builds the read-only answers.

pub mod handle;
pub mod protocol;
pub mod server;
pub mod view;
