//! A finalization's CSR: strict DER, an allowed key, a signature checked under an algorithm that suits it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(csr) = quarry_core::csr::parse_csr(data) else { return };
    let _ = csr.names();
    for identifier in csr.identifiers() {
        let _ = identifier.check_well_formed();
    }
});
