// Whether LLVM knows a CPU name for a target triple. LLVM's C API cannot
// tell: LLVMCreateTargetMachine accepts any name and only prints a warning
// ("is not a recognized processor") before generating generic code. The
// target's processor table, which answers exactly, is reachable only
// through the C++ API, hence this shim (built by build.rs).

#include "llvm/MC/MCSubtargetInfo.h"
#include "llvm/MC/TargetRegistry.h"
#include "llvm/TargetParser/Triple.h"

#include <cstring>
#include <memory>
#include <string>

// Returns 1 when `cpu` is a processor of `triple`'s target, 0 when it is
// not, -1 when the target is not registered (not initialized or not built
// into LLVM). Writes the target's processor names, comma-separated and
// NUL-terminated (truncated to `cap` bytes), into `names` when it is not
// NULL.
extern "C" int kiln_llvm_cpu_check(const char *triple, const char *cpu, char *names, size_t cap) {
    llvm::Triple parsed(triple);
    std::string error;
    const llvm::Target *target = llvm::TargetRegistry::lookupTarget(parsed, error);
    if (!target) return -1;
    // An empty CPU name: creating the subtarget with the name itself would
    // print LLVM's warning for an unknown one.
    std::unique_ptr<llvm::MCSubtargetInfo> info(target->createMCSubtargetInfo(parsed, "", ""));
    if (!info) return -1;
    if (names && cap > 0) {
        std::string list;
        for (const auto &p : info->getAllProcessorDescriptions()) {
            if (!list.empty()) list += ",";
            list += p.Key;
        }
        std::strncpy(names, list.c_str(), cap - 1);
        names[cap - 1] = '\0';
    }
    return info->isCPUStringValid(cpu) ? 1 : 0;
}

// Writes the target features a CPU (plus an explicit feature string) has,
// comma-separated and NUL-terminated (truncated to `cap` bytes), into
// `out`. Returns 0, or -1 when the target is not registered.
extern "C" int kiln_llvm_cpu_features(const char *triple, const char *cpu, const char *features, char *out,
                                      size_t cap) {
    llvm::Triple parsed(triple);
    std::string error;
    const llvm::Target *target = llvm::TargetRegistry::lookupTarget(parsed, error);
    if (!target || cap == 0) return -1;
    std::unique_ptr<llvm::MCSubtargetInfo> info(target->createMCSubtargetInfo(parsed, cpu, features));
    if (!info) return -1;
    std::string list;
    for (const auto &f : info->getAllProcessorFeatures()) {
        if (info->getFeatureBits().test(f.Value)) {
            if (!list.empty()) list += ",";
            list += f.Key;
        }
    }
    std::strncpy(out, list.c_str(), cap - 1);
    out[cap - 1] = '\0';
    return 0;
}
