//! The use cases, over the ports and the domain: admitting a request's readings (`admission`,
//! one order on every host), getting accepted readings to the collector
//! (`delivery`), keeping the stored calibration profiles fresh (`profile_cache`) and reading
//! the device registry (`registry`). No host SDK,
//! no HTTP and no configuration parsing here: each part takes its policy as a plain struct.

pub mod admission;
pub mod delivery;
pub mod group_commit;
pub mod profile_cache;
pub mod rate_limit;
pub mod recent;
pub mod registry;
