//! Device profiles: the peaks and capacities the roofline cost model prices
//! kernels against. Built in: the H100 SXM and H200 (from figures measured on
//! the lent cards) and a CPU profile (replaced by `mixc calibrate` once the CPU
//! backend measures one); any profile can be loaded from TOML.

use serde::Deserialize;

/// What runs the programs.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    Gpu,
    Cpu,
}

/// Peaks, bandwidths and capacities of one device.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeviceProfile {
    pub name: String,
    pub kind: DeviceKind,
    /// Sustained dense matrix throughput (tensor cores, bf16 in, f32 accumulate), FLOP/s.
    pub matmul_flops: f64,
    /// Sustained elementwise f32 throughput (SIMT or SIMD FMA), FLOP/s.
    pub vector_flops: f64,
    /// Device memory (HBM or DRAM) bandwidth, B/s.
    pub dram_bw: f64,
    /// L2 (GPU) or last-level cache bandwidth, B/s.
    pub l2_bw: f64,
    /// Streaming multiprocessors (GPU) or cores (CPU).
    pub units: u32,
    /// Programs one unit keeps in flight at best (occupancy).
    pub programs_per_unit: u32,
    /// Shared memory per SM (GPU) or L2 per core (CPU), bytes.
    pub local_mem: u64,
    /// 32-bit registers per SM (GPU); 0 on a CPU.
    pub registers: u32,
    /// Cost of one kernel launch, s.
    pub launch_s: f64,
    /// Bytes per element of a bf16/f16 buffer in this device's memory: 2 on a
    /// GPU, 4 on the CPU (its runtime keeps every buffer in 32-bit words).
    /// f32 buffers take 4 everywhere.
    pub elem_bytes: u32,
    /// The matrix unit's tile granularity: each dimension of a `dot` is padded
    /// to a multiple of it (16 for `mma.m16n8k16`), so a rank-1 update or a
    /// one-row product costs as much as a 16-wide one.
    pub mma_granularity: u32,
    /// Threads an SM holds at once (GPU; occupancy with the threads per program).
    #[serde(default = "default_threads_per_unit")]
    pub threads_per_unit: u32,
    /// What a program waits on besides the roofline's peaks (GPU); all 0: none.
    #[serde(default)]
    pub latency: LatencyTerms,
}

fn default_threads_per_unit() -> u32 {
    2048
}

/// Seconds one program spends per statement it executes, by kind, on one SM
/// (the cost model's latency term, `passes::cost`). Fitted to measurement: the
/// built-in GPU figures come from the schedule sweep of the five anchor mixers
/// on an H200 (148 measured candidates at B·H ∈ {8, 128}, L ∈ {2048, 8192},
/// `bench/results/2026-11-26-h200-afternoon/sweep_*.txt`), by least squares
/// on relative error, with each kernel's shared memory and spill taken from the
/// PTX backend's plan.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LatencyTerms {
    /// Per tile statement (a pass of the program's threads, most ending at a barrier).
    pub op_s: f64,
    /// Per element of a statement's result whose tiles live in shared memory.
    pub elem_s: f64,
    /// Per element, for the share of a kernel's tiles spilled to global scratch.
    pub spilled_elem_s: f64,
    /// Per global load statement (the wait for device memory).
    pub load_s: f64,
    /// Per `dot` statement.
    pub dot_s: f64,
    /// Per matrix-unit instruction a warp issues (a `dot`'s share of one warp).
    pub mma_s: f64,
}

impl LatencyTerms {
    /// Fitted on an H200 (sm_90, 132 SMs) to the code this backend emits today;
    /// also used for the H100 (the same SM) and, for want of a measurement,
    /// the A100. Refit when the generated code changes much.
    pub fn hopper() -> LatencyTerms {
        LatencyTerms {
            op_s: 74e-9,
            elem_s: 0.075e-9,
            spilled_elem_s: 0.52e-9,
            load_s: 0.70e-6,
            dot_s: 84e-9,
            mma_s: 0.0,
        }
    }
}

impl DeviceProfile {
    /// H100 SXM 80GB: 680 TFLOP/s sustained bf16 matmul, 3.0 TB/s device copy
    /// (measured on the lent card, `../shared/anchors/README.md`).
    pub fn h100() -> DeviceProfile {
        DeviceProfile {
            name: "h100".into(),
            kind: DeviceKind::Gpu,
            matmul_flops: 680e12,
            vector_flops: 60e12,
            dram_bw: 3.0e12,
            l2_bw: 10e12,
            units: 132,
            programs_per_unit: 2,
            local_mem: 228 * 1024,
            registers: 65536,
            launch_s: 4e-6,
            elem_bytes: 2,
            mma_granularity: 16,
            threads_per_unit: 2048,
            latency: LatencyTerms::hopper(),
        }
    }

    /// H200: the H100's chip with 4.3 TB/s HBM3e.
    pub fn h200() -> DeviceProfile {
        DeviceProfile { name: "h200".into(), dram_bw: 4.3e12, matmul_flops: 700e12, ..DeviceProfile::h100() }
    }

    /// A 2-core x86 machine with 128-bit FMA vectors (Cranelift's width) until
    /// `mixc calibrate` measures this one.
    pub fn cpu_default() -> DeviceProfile {
        DeviceProfile {
            name: "cpu".into(),
            kind: DeviceKind::Cpu,
            matmul_flops: 2.0 * 2.0 * 2.0 * 4.0 * 2.5e9,
            vector_flops: 2.0 * 2.0 * 2.0 * 4.0 * 2.5e9,
            dram_bw: 10e9,
            l2_bw: 50e9,
            units: 2,
            programs_per_unit: 1,
            local_mem: 1 << 20,
            registers: 0,
            launch_s: 2e-6,
            elem_bytes: 4,
            mma_granularity: 4,
            threads_per_unit: 2048,
            latency: LatencyTerms::default(),
        }
    }

    /// The built-in profile for a target name (`sm_80`, `sm_90`, `sm_90a`, `h100`,
    /// `h200`, `cpu`).
    pub fn builtin(target: &str) -> Option<DeviceProfile> {
        match target {
            "sm_90" | "sm_90a" | "h100" | "cuda" => Some(DeviceProfile::h100()),
            "sm_80" => Some(DeviceProfile {
                name: "a100".into(),
                matmul_flops: 280e12,
                vector_flops: 19.5e12,
                dram_bw: 1.8e12,
                units: 108,
                local_mem: 164 * 1024,
                ..DeviceProfile::h100()
            }),
            "h200" => Some(DeviceProfile::h200()),
            "cpu" => Some(DeviceProfile::cpu_default()),
            _ => None,
        }
    }

    /// A profile from TOML text (every field given; unknown keys rejected).
    pub fn from_toml(src: &str) -> Result<DeviceProfile, String> {
        toml::from_str(src).map_err(|e| e.to_string())
    }
}
