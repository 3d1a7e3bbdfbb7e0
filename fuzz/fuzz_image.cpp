// Fuzzes the image decoder: liondg::decode_image on JPEG (libjpeg-turbo) and PNG
// (libpng) input, with size limits lowered for hostile input as image.h advises.
// A decoded image is checked for consistency, converted to the other channel
// count, and (when small) re-encoded as PNG, which must decode to the same pixels,
// and as JPEG, which must decode to the same size. Exceptions from decoding are
// the decoder's way of rejecting input; anything else is a bug.

#include <liondg/data/image.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <vector>

namespace {

constexpr char kWhat[] = "fuzz-image";
// Limits for untrusted input: 4096 x 4096 and 4 Mpixels (the defaults allow 2^28
// pixels, a few GiB for a progressive JPEG, over the fuzzer's memory limit).
constexpr int64_t kMaxSide = 4096;
constexpr int64_t kMaxPixels = int64_t{1} << 22;
// Round trips only for small images (they cost time on every execution).
constexpr int64_t kMaxRoundTripPixels = 4096;
constexpr int kJpegQuality = 90;

void check_image(const liondg::Image& image, const liondg::ImageLimits& limits) {
  if (image.channels != 1 && image.channels != 3) std::abort();
  if (image.width <= 0 || image.height <= 0) std::abort();
  if (image.width > limits.max_width || image.height > limits.max_height ||
      image.width * image.height > limits.max_pixels) {
    std::abort();
  }
  if (image.pixels.size() != static_cast<size_t>(image.width * image.height * image.channels)) std::abort();
}

void round_trip(const liondg::Image& image) {
  const liondg::Image other = liondg::convert_channels(image, image.channels == 1 ? 3 : 1);
  if (other.width != image.width || other.height != image.height) std::abort();
  if (image.width * image.height > kMaxRoundTripPixels) return;
  const liondg::Image png = liondg::decode_image(liondg::encode_png(image), "round-trip.png");
  if (png.width != image.width || png.height != image.height || png.channels != image.channels ||
      png.pixels != image.pixels) {
    std::abort();
  }
  const liondg::Image jpeg = liondg::decode_image(liondg::encode_jpeg(image, kJpegQuality), "round-trip.jpg");
  if (jpeg.width != image.width || jpeg.height != image.height || jpeg.channels != image.channels) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  liondg::ImageLimits limits;
  limits.max_width = kMaxSide;
  limits.max_height = kMaxSide;
  limits.max_pixels = kMaxPixels;
  liondg::Image image;
  try {
    image = liondg::decode_image(data, size, kWhat, limits);
  } catch (const std::exception&) {
    return 0;
  }
  check_image(image, limits);
  round_trip(image);  // must not throw: an exception here escapes and is reported
  return 0;
}
