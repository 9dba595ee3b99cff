//! syncd library.
