//! Helpers shared by every integration test module: the server under test
//! ([`command::TestCommand`]), the web servers in front of it ([`webserver`]) and the clients
//! that talk to either ([`client`]).

pub(crate) mod apache_proxy;
pub(crate) mod client;
pub(crate) mod command;
pub(crate) mod lighttpd_gw;
pub(crate) mod webserver;
