//! Shared by the provider and stage tests: a generated CA and TLS servers it signed.

pub(crate) use pushrelay_testkit::tls::Pki;
