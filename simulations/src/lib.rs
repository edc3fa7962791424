//! Spot-market simulations running the `protocol` crate's decision code (issue: simulations).
//! Empty until that lands.
