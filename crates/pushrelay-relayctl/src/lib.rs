//! The library behind `relayctl`: pure operations on tenant records ([`ops`]) and the
//! tenants topic ([`store`]).

pub mod ops;
pub mod store;
