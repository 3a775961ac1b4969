//! The tests on REAL upstream Kubernetes v1.20.2 (built by scripts/kubernetes), in one test
//! binary so that they run side by side: cargo runs test binaries one after another, and each of
//! these spends most of its time waiting for real components to stop, start and become healthy.
//! libtest starts tests in name order on as many threads as there are cores (two in CI): the
//! longest, the CA rotation, sorts first (`ca_rotation`), so the others share the second thread
//! meanwhile and the binary takes about as long as the rotation alone. Each test has its own
//! testbed on its own loopback /24.

#[path = "../support/cluster.rs"]
mod cluster;
#[path = "../support/endpoint.rs"]
mod endpoint;
#[path = "../support/fixture.rs"]
mod fixture;
#[path = "../support/openssl.rs"]
mod openssl;
#[path = "../support/real_kube.rs"]
mod real_kube;
#[path = "../support/testbed.rs"]
mod testbed;

mod ca_rotation;
mod kubernetes;
mod renew;
