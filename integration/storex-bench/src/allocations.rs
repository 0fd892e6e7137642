//! Allocations counted over a measured path, with the `allocations` feature (the bench's
//! allocator then counts every allocation and reallocation, on every thread): a figure of
//! the work done that this machine's changing speed does not move. Without the feature
//! nothing is counted and nothing printed.

/// The allocations made since it was started, on every thread of the process.
pub(crate) struct AllocationCount {
    #[cfg(feature = "allocations")]
    region: stats_alloc::Region<'static, std::alloc::System>,
}

impl AllocationCount {
    /// Starts counting.
    pub(crate) fn start() -> Self {
        AllocationCount {
            #[cfg(feature = "allocations")]
            region: stats_alloc::Region::new(crate::ALLOCATOR),
        }
    }

    /// Prints `bench: <name> <allocations per operation> allocs` for the `ops` operations
    /// done since the start, reallocations counted as allocations (with the feature;
    /// otherwise nothing).
    #[cfg_attr(not(feature = "allocations"), allow(unused_variables))]
    pub(crate) fn report(&self, name: &str, ops: u64) {
        #[cfg(feature = "allocations")]
        {
            let change = self.region.change();
            let made = change.allocations + change.reallocations;
            crate::report::figure(name, made as f64 / ops.max(1) as f64, "allocs");
        }
    }
}
