//! HTTP plumbing for token and discovery requests: the client and its limits, the URL rules,
//! the server's requested wait, and the one sanitiser for text a server sends.

pub(crate) mod client;
pub(crate) mod retry_after;
pub(crate) mod sanitize;
pub(crate) mod url;

pub(crate) use client::HttpClient;
