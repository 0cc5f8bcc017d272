//! The library behind `relayctl`: pure operations on tenant records ([`ops`]), the
//! tenants topic ([`store`]) and the end-to-end connectivity probe ([`probe`]).

pub mod ops;
pub mod probe;
pub mod store;
