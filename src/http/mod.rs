//! HTTP plumbing for token and discovery requests: the client and its limits, the URL rules,
//! the server's requested wait, the one sanitiser for text a server sends, and the
//! `WWW-Authenticate` challenges of an API's 401.

pub(crate) mod challenge;
pub(crate) mod client;
pub(crate) mod retry_after;
pub(crate) mod sanitize;
pub(crate) mod url;

pub(crate) use client::HttpClient;
