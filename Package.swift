// swift-tools-version:6.1
import PackageDescription

// The numeric kernels use SIMD8<Float>: with AVX2 and FMA (x86-64 since Haswell) a vector is
// one ymm register and addProduct one vfmadd; without them every lane is a libm fmaf call.
#if arch(x86_64)
let cpuFlags = ["-target-cpu", "haswell"]
#else
let cpuFlags: [String] = []
#endif

// KDCore holds the numeric kernels: every hot loop runs over unsafe buffers whose extents are
// checked once at the op boundary, so its release build skips bounds and overflow checks. Every
// other target reads untrusted bytes (safetensors, config.json, run YAML, JSONL, tokenizer and
// adapter files, trainer state) and keeps Swift's checks on.
let kernelSettings: [SwiftSetting] = [
    .unsafeFlags(cpuFlags),
    .unsafeFlags(["-Ounchecked", "-wmo"], .when(configuration: .release)),
    .swiftLanguageMode(.v5),
]
let checkedSettings: [SwiftSetting] = [
    .unsafeFlags(cpuFlags),
    .unsafeFlags(["-wmo"], .when(configuration: .release)),
    .swiftLanguageMode(.v5),
]
let settings: [SwiftSetting] = [.swiftLanguageMode(.v5)]
// The C kernels: optimised, for the same CPUs as the Swift ones, and never contracting a*b+c on
// their own (the fused products are written out, so every build sums the same way).
#if arch(x86_64)
let cKernelFlags = ["-O3", "-mavx2", "-mfma", "-ffp-contract=off"]
#else
let cKernelFlags = ["-O3", "-ffp-contract=off"]
#endif

let package = Package(
    name: "kd",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "kd", targets: ["kd"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    ],
    targets: [
        // OpenBLAS (cblas) and LAPACKE from the system.
        .systemLibrary(
            name: "COpenBLAS",
            providers: [.apt(["libopenblas-dev", "liblapacke-dev"])]
        ),
        // Open MPI from the system (its headers and libmpi through pkg-config's ompi-c): the ranks
        // of a run started by mpirun or srun.
        .systemLibrary(
            name: "COpenMPI",
            pkgConfig: "ompi-c",
            providers: [.apt(["libopenmpi-dev", "openmpi-bin"])]
        ),
        // Decoding's matrix-vector kernels over f32 and bf16 weights, in C with AVX2 intrinsics and
        // an AVX-512 path built for its own target and taken when the CPU has it (Swift's SIMD
        // widening of 16-bit lanes runs lane by lane).
        .target(name: "CKernels", cSettings: [.unsafeFlags(cKernelFlags)]),
        // Tensors, devices, device groups, the MPI communicator, BLAS and SIMD kernels.
        .target(name: "KDCore", dependencies: ["COpenBLAS", "COpenMPI", "CKernels"], swiftSettings: kernelSettings),
        // safetensors, model configs, Qwen3 / Qwen3-MoE, LoRA, placement.
        .target(name: "KDModels", dependencies: ["KDCore"], swiftSettings: checkedSettings),
        // Tokenizer, chat template, datasets and batches.
        .target(name: "KDText", dependencies: ["KDCore"], swiftSettings: checkedSettings),
        // Run config and memory plan (training lands here).
        .target(
            name: "KDTrain",
            dependencies: ["KDCore", "KDModels", "KDText", .product(name: "Yams", package: "Yams")],
            swiftSettings: checkedSettings
        ),
        // Inference: forward, generation, comparison and evaluation.
        .target(name: "KDEval", dependencies: ["KDCore", "KDModels", "KDText", "KDTrain"], swiftSettings: checkedSettings),
        // The command-line interface: argument parsing and output only.
        .executableTarget(
            name: "kd",
            dependencies: [
                "KDCore", "KDModels", "KDText", "KDTrain", "KDEval",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: settings
        ),
        // Fuzz targets for the parsers of kd's input files, shared by kd-fuzz and the mutation tests.
        .target(name: "KDFuzzSupport", dependencies: ["KDCore", "KDModels", "KDText", "KDTrain"], swiftSettings: settings),
        // A corpus replayer and mutator; a libFuzzer binary when built by Scripts/fuzz.sh (-DFUZZING).
        .executableTarget(name: "kd-fuzz", dependencies: ["KDFuzzSupport"], swiftSettings: settings),
        .testTarget(name: "KDCoreTests", dependencies: ["KDCore"], swiftSettings: settings),
        .testTarget(name: "KDModelsTests", dependencies: ["KDCore", "KDModels"], swiftSettings: settings),
        .testTarget(name: "KDTextTests", dependencies: ["KDCore", "KDText"], swiftSettings: settings),
        .testTarget(name: "KDTrainTests", dependencies: ["KDCore", "KDModels", "KDTrain"], swiftSettings: settings),
        .testTarget(name: "KDEvalTests", dependencies: ["KDCore", "KDModels", "KDText", "KDEval"], swiftSettings: settings),
        // Thousands of deterministic mutants per parser: each returns or throws, never traps.
        .testTarget(name: "KDFuzzTests", dependencies: ["KDCore", "KDFuzzSupport"], swiftSettings: settings),
        // Runs the built `kd` binary: exit codes, stdout/stderr, end-to-end files.
        .testTarget(name: "KDCommandTests", dependencies: ["kd", "KDCore", "KDModels"], swiftSettings: settings),
    ]
)
