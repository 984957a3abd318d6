//! The gRPC protocol between the conductor and its workers (`proto/conductor.proto`).
//!
//! The Rust code is generated and checked in (`conductor.worker.v1.rs`), so building needs no
//! `protoc`. After changing the `.proto`, regenerate it with `protox` and `tonic-prost-build`
//! (see `proto/README.md`).

#[allow(clippy::all)]
mod generated {
    include!("conductor.worker.v1.rs");
}

pub use generated::*;
