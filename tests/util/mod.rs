//! Helpers shared by every integration test module: the server under test
//! ([`command::TestCommand`]), the web servers in front of it ([`webserver`]), the clients
//! that talk to either ([`client`]) and the case set every web-server suite runs ([`cases`]).

pub(crate) mod apache_proxy;
pub(crate) mod caddy;
pub(crate) mod cases;
pub(crate) mod client;
pub(crate) mod command;
pub(crate) mod h2o;
pub(crate) mod lighttpd_gw;
pub(crate) mod load;
pub(crate) mod webserver;
