//! Fault-injection tools for tube's test suite.
