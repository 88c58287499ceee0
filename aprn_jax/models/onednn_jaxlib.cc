// oneDNN's C API taken from the copy inside jaxlib (aprn_jax/models/onednn.py, "Which oneDNN").
//
// jaxlib links oneDNN in statically, built for a thread-pool runtime, with its functions
// hidden (not exported) but listed in the library's symbol table. Each function of the C API
// that onednn.cc's calls reach is defined here as a jump through a pointer; Bind() fills the
// pointers from jaxlib's symbol table and its load address. A jump keeps every argument
// register and the stack as the caller left them, so no prototype is repeated here.
// dnnl_stream_wait is the one function defined in C++: on a synchronous thread pool (onednn.cc
// passes no ASYNCHRONOUS flag) every primitive has finished when its execute returns.
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "oneapi/dnnl/dnnl.h"

// The C API functions onednn.cc's calls reach (`nm -u` of its object, less dnnl_stream_*,
// plus the thread-pool stream's constructor and oneDNN's version).
#define APRN_DNNL_FUNCTIONS(X)                                                               \
  X(dnnl_convolution_backward_data_primitive_desc_create)                                    \
  X(dnnl_convolution_backward_weights_primitive_desc_create)                                 \
  X(dnnl_convolution_forward_primitive_desc_create)                                          \
  X(dnnl_data_type_size)                                                                     \
  X(dnnl_engine_create)                                                                      \
  X(dnnl_engine_destroy)                                                                     \
  X(dnnl_memory_create_v2)                                                                   \
  X(dnnl_memory_desc_clone)                                                                  \
  X(dnnl_memory_desc_create_with_tag)                                                        \
  X(dnnl_memory_desc_destroy)                                                                \
  X(dnnl_memory_desc_equal)                                                                  \
  X(dnnl_memory_desc_get_size_v2)                                                            \
  X(dnnl_memory_desc_query)                                                                  \
  X(dnnl_memory_destroy)                                                                     \
  X(dnnl_memory_get_data_handle_v2)                                                          \
  X(dnnl_memory_get_engine)                                                                  \
  X(dnnl_memory_get_memory_desc)                                                             \
  X(dnnl_pooling_backward_primitive_desc_create)                                             \
  X(dnnl_pooling_forward_primitive_desc_create)                                              \
  X(dnnl_primitive_attr_create)                                                              \
  X(dnnl_primitive_attr_destroy)                                                             \
  X(dnnl_primitive_attr_set_scratchpad_mode)                                                 \
  X(dnnl_primitive_create)                                                                   \
  X(dnnl_primitive_desc_destroy)                                                             \
  X(dnnl_primitive_desc_query_md)                                                            \
  X(dnnl_primitive_destroy)                                                                  \
  X(dnnl_primitive_execute)                                                                  \
  X(dnnl_reorder_primitive_desc_create)                                                      \
  X(dnnl_stream_destroy)                                                                     \
  X(dnnl_threadpool_interop_stream_create)                                                   \
  X(dnnl_threadpool_interop_set_max_concurrency)                                             \
  X(dnnl_version)

#define APRN_POINTER(name) \
  extern "C" __attribute__((visibility("hidden"))) void* aprn_ptr_##name = nullptr;
APRN_DNNL_FUNCTIONS(APRN_POINTER)

#define APRN_TRAMPOLINE(name)                                                               \
  asm(".text\n.globl " #name "\n.hidden " #name "\n.type " #name ",@function\n" #name ":\n" \
      "  jmp *aprn_ptr_" #name "(%rip)\n.size " #name ",.-" #name "\n");
APRN_DNNL_FUNCTIONS(APRN_TRAMPOLINE)

extern "C" __attribute__((visibility("hidden"))) dnnl_status_t dnnl_stream_wait(dnnl_stream_t) {
  return dnnl_success;
}

namespace {

struct Module {
  std::string path;
  ElfW(Addr) base = 0;
};

int FindJaxlib(struct dl_phdr_info* info, size_t, void* data) {
  const char* name = info->dlpi_name;
  if (name && std::strstr(name, "/libjax_common.so")) {
    auto* module = static_cast<Module*>(data);
    module->path = name;
    module->base = info->dlpi_addr;
    return 1;
  }
  return 0;
}

// Sets aprn_ptr_<name> for each function of APRN_DNNL_FUNCTIONS that the ELF symbol table of
// `module` names; returns "" or what is wrong (a table or name outside the file included).
std::string ReadSymbols(const Module& module) {
  int fd = open(module.path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "cannot open " + module.path;
  struct stat st;
  if (fstat(fd, &st) != 0) {
    close(fd);
    return "cannot stat " + module.path;
  }
  size_t size = static_cast<size_t>(st.st_size);
  void* map = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (map == MAP_FAILED) return "cannot map " + module.path;
  const char* file = static_cast<const char*>(map);
  std::string error;
  auto* header = reinterpret_cast<const Elf64_Ehdr*>(file);
  if (size < sizeof(Elf64_Ehdr) || std::memcmp(header->e_ident, ELFMAG, SELFMAG) != 0 ||
      header->e_ident[EI_CLASS] != ELFCLASS64) {
    error = module.path + " is not a 64-bit ELF file";
  } else if (header->e_shoff > size ||
             header->e_shnum > (size - header->e_shoff) / sizeof(Elf64_Shdr)) {
    error = module.path + "'s section table lies outside the file";
  } else {
    auto* sections = reinterpret_cast<const Elf64_Shdr*>(file + header->e_shoff);
    auto inside = [&](const Elf64_Shdr& s) {
      return s.sh_offset <= size && s.sh_size <= size - s.sh_offset;
    };
    const Elf64_Shdr* symtab = nullptr;
    for (int i = 0; i < header->e_shnum; ++i)
      if (sections[i].sh_type == SHT_SYMTAB) symtab = &sections[i];
    if (!symtab) {
      error = module.path + " has no symbol table";
    } else if (symtab->sh_link >= header->e_shnum || !inside(*symtab) ||
               !inside(sections[symtab->sh_link])) {
      error = module.path + "'s symbol table lies outside the file";
    } else {
      const Elf64_Shdr& strtab = sections[symtab->sh_link];
      const char* names = file + strtab.sh_offset;
      auto* symbols = reinterpret_cast<const Elf64_Sym*>(file + symtab->sh_offset);
      size_t count = symtab->sh_size / sizeof(Elf64_Sym);
      for (size_t i = 0; i < count; ++i) {
        const Elf64_Sym& s = symbols[i];
        if (ELF64_ST_TYPE(s.st_info) != STT_FUNC || s.st_value == 0) continue;
        if (s.st_name >= strtab.sh_size) continue;
        const char* name = names + s.st_name;
        size_t room = strtab.sh_size - s.st_name;  // a name must end inside the table
        if (strnlen(name, room) == room) continue;
        if (std::strncmp(name, "dnnl_", 5) != 0) continue;
        void* address = reinterpret_cast<void*>(module.base + s.st_value);
#define APRN_MATCH(fn) \
        if (std::strcmp(name, #fn) == 0) aprn_ptr_##fn = address;
        APRN_DNNL_FUNCTIONS(APRN_MATCH)
      }
    }
  }
  munmap(map, size);
  return error;
}

}  // namespace

// Binds every function to jaxlib's oneDNN. Returns nullptr, or a message naming what is
// missing (the caller then keeps the oneDNN package's library).
extern "C" const char* AprnBindJaxlibOneDnn() {
  static std::string result = [] {
    Module module;
    dl_iterate_phdr(FindJaxlib, &module);
    if (module.path.empty()) return std::string("jaxlib's libjax_common.so is not loaded");
    std::string error = ReadSymbols(module);
    if (!error.empty()) return error;
    std::string missing;
#define APRN_CHECK(fn) \
    if (!aprn_ptr_##fn) missing += std::string(missing.empty() ? "" : ", ") + #fn;
    APRN_DNNL_FUNCTIONS(APRN_CHECK)
    if (!missing.empty()) return module.path + " lacks " + missing;
    const dnnl_version_t* version = dnnl_version();
    if (version->major != DNNL_VERSION_MAJOR || version->minor < DNNL_VERSION_MINOR ||
        version->cpu_runtime != DNNL_RUNTIME_THREADPOOL)
      return "jaxlib's oneDNN is " + std::to_string(version->major) + "." +
             std::to_string(version->minor) + " with CPU runtime " +
             std::to_string(version->cpu_runtime) + "; this build needs " +
             std::to_string(DNNL_VERSION_MAJOR) + "." + std::to_string(DNNL_VERSION_MINOR) +
             "+ on a thread pool";
    return std::string();
  }();
  return result.empty() ? nullptr : result.c_str();
}
