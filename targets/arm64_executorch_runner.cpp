// ExecuTorch on the emulated arm64 device (targets/arm64.py): `make arm64` cross-compiles this against the runtime
// libraries and headers of ExecuTorch's aarch64 wheel (they need no torch, unlike its Python bindings) and puts it
// in the root. Usage:
//     executorch-runner MODEL.pte INPUT.f32 N C H W OUTPUT.f32
// Runs the program's forward on each of the N float32 C x H x W images of INPUT.f32 (batch 1), writes the first
// output of each to OUTPUT.f32 in order, and prints the output's element count. The XNNPACK delegate's threadpool
// has its default size, a thread per core (the wheel ships no header to resize it; threads change no result).
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor_ptr_maker.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <vector>

using executorch::extension::from_blob;
using executorch::extension::Module;
using executorch::runtime::Error;

int main(int argc, char** argv) {
  if (argc != 8) {
    std::fprintf(stderr, "usage: %s MODEL.pte INPUT.f32 N C H W OUTPUT.f32\n", argv[0]);
    return 2;
  }
  const int n = std::atoi(argv[3]), c = std::atoi(argv[4]), h = std::atoi(argv[5]), w = std::atoi(argv[6]);
  const size_t image = size_t(c) * h * w;
  std::vector<float> images(image * n);
  std::ifstream in(argv[2], std::ios::binary);
  if (!in.read(reinterpret_cast<char*>(images.data()), std::streamsize(images.size() * sizeof(float)))) {
    std::fprintf(stderr, "%s holds fewer than %d images of %d x %d x %d floats\n", argv[2], n, c, h, w);
    return 1;
  }
  Module module(argv[1], Module::LoadMode::File);
  if (const Error error = module.load_forward(); error != Error::Ok) {
    std::fprintf(stderr, "ExecuTorch cannot load %s: error %d\n", argv[1], int(error));
    return 1;
  }
  std::ofstream out(argv[7], std::ios::binary);
  size_t numel = 0;
  for (int i = 0; i < n; ++i) {
    auto tensor = from_blob(images.data() + image * i, {1, c, h, w});
    const auto result = module.forward(tensor);
    if (!result.ok()) {
      std::fprintf(stderr, "ExecuTorch failed on image %d of %s: error %d\n", i, argv[1], int(result.error()));
      return 1;
    }
    const auto& logits = result->at(0).toTensor();
    numel = logits.numel();
    out.write(reinterpret_cast<const char*>(logits.const_data_ptr<float>()), std::streamsize(numel * sizeof(float)));
  }
  std::printf("%zu\n", numel);
  return out.good() ? 0 : 1;
}
