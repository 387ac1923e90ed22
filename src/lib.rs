pub use ordering;
pub use proto;
