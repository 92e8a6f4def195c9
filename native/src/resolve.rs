//! Version resolution: which version of `tenant/name` answers a request.
