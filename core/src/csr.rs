//! CSR parsing (being written).
