//! Entry points for the fuzz targets (`queue-gateway/fuzz`) and the corpus replay test: each
//! runs one parser of the front door on arbitrary bytes and panics if an invariant breaks.
//! Not part of the gateway's API.
