pub mod caps;
pub mod framing;
pub mod responses;
