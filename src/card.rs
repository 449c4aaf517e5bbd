//! What fits a CUDA card: the built-in device profile its name calls for, the
//! PTX target to compile for its compute capability, and whether a bundle
//! compiled for some target runs on it. Pure functions of what the driver
//! reports, so they build and test without a GPU.

use mixc_passes::device::DeviceProfile;

/// The built-in profile name (as `mixc devices` lists it) for a card: `h200`
/// for an H200, `sm_80` (the A100 profile) for an A100, else `h100`.
pub fn profile_name(card: &str) -> &'static str {
    let upper = card.to_ascii_uppercase();
    if upper.contains("H200") {
        "h200"
    } else if upper.contains("A100") {
        "sm_80"
    } else {
        "h100"
    }
}

/// The built-in profile for a card (see [`profile_name`]).
pub fn profile(card: &str) -> DeviceProfile {
    DeviceProfile::builtin(profile_name(card)).unwrap_or_else(DeviceProfile::h100)
}

/// The PTX target to compile for a card of compute capability `(major,
/// minor)`: `sm_90` from Hopper on (the PTX is JIT-compiled forward on newer
/// cards), `sm_80` on Ampere and Ada.
pub fn ptx_target(cc: (u32, u32)) -> Result<&'static str, String> {
    match cc.0 {
        9.. => Ok("sm_90"),
        8 => Ok("sm_80"),
        _ => {
            Err(format!("the GPU has compute capability {}.{}; mixc's kernels need 8.0 (Ampere) or newer", cc.0, cc.1))
        }
    }
}

/// Whether PTX compiled for `target` (a bundle's `sm_80`, `sm_90`, `sm_90a`
/// or `cuda`) loads on a card of compute capability `cc`: plain targets run
/// on their capability and newer, `sm_90a` on 9.0 only.
pub fn runs_on(target: &str, cc: (u32, u32)) -> bool {
    match target {
        "sm_80" => cc >= (8, 0),
        "sm_90" | "cuda" => cc >= (9, 0),
        "sm_90a" => cc == (9, 0),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_follow_the_card_name() {
        assert_eq!(profile_name("NVIDIA H200"), "h200");
        assert_eq!(profile_name("NVIDIA H200 NVL"), "h200");
        assert_eq!(profile_name("NVIDIA H100 80GB HBM3"), "h100");
        assert_eq!(profile_name("NVIDIA A100-SXM4-80GB"), "sm_80");
        assert_eq!(profile_name("NVIDIA GeForce RTX 4090"), "h100");
        assert_eq!(profile("nvidia h200").name, "h200");
        assert_eq!(profile("NVIDIA H100 PCIe").name, "h100");
        assert_eq!(profile("NVIDIA A100-SXM4-40GB").name, "a100");
    }

    #[test]
    fn ptx_targets_follow_the_compute_capability() {
        assert_eq!(ptx_target((9, 0)), Ok("sm_90"));
        assert_eq!(ptx_target((10, 0)), Ok("sm_90"));
        assert_eq!(ptx_target((8, 0)), Ok("sm_80"));
        assert_eq!(ptx_target((8, 9)), Ok("sm_80"));
        assert!(ptx_target((7, 5)).is_err_and(|e| e.contains("7.5")));
    }

    #[test]
    fn bundles_run_on_their_capability_and_newer() {
        assert!(runs_on("sm_90", (9, 0)) && runs_on("cuda", (10, 0)) && !runs_on("sm_90", (8, 0)));
        assert!(runs_on("sm_80", (9, 0)) && runs_on("sm_80", (8, 6)));
        assert!(runs_on("sm_90a", (9, 0)) && !runs_on("sm_90a", (10, 0)));
        assert!(!runs_on("sm_75", (9, 0)));
    }
}
