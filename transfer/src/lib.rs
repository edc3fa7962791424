//! Content-addressed CRIU image transfer over QUIC (issue: transfer). Empty until that lands.
