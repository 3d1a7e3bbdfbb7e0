#pragma once
// Image decoding and encoding without torch: JPEG through libjpeg-turbo
// (<jpeglib.h>, link -ljpeg) and PNG through libpng (<png.h>, link -lpng16).
//
// Decoding is strict: anything libjpeg or libpng reports as damage (including
// libjpeg *warnings* such as "Premature end of JPEG file", after which libjpeg
// would otherwise hand back grey-filled rows) is an error. All functions are
// thread-safe (no global state) and decoding is meant to survive hostile input.

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace liondg {

/// A decoded 8-bit image, pixels interleaved (H,W,C) row-major; C = 1 (grey) or 3 (RGB).
struct Image {
  int64_t height = 0;
  int64_t width = 0;
  int64_t channels = 0;
  std::vector<uint8_t> pixels;  // height * width * channels bytes
};

enum class ImageFormat { kUnknown, kJpeg, kPng };

/// Size limits checked from the file header, before any pixel memory is allocated.
/// They bound the memory a (possibly hostile) input can make the decoder take:
/// the output is width * height * channels bytes (reserved at once, but written,
/// and so made resident, only as rows are decoded, except for interlaced PNGs),
/// and a progressive JPEG needs about 2 more bytes per pixel and colour component
/// while it is decoded. Lower them for untrusted input where that matters.
struct ImageLimits {
  int64_t max_width = 16384;
  int64_t max_height = 16384;
  int64_t max_pixels = int64_t{1} << 28;  // width * height
};

/// Detects the format from the leading magic bytes (not the file name):
/// JPEG = FF D8 FF, PNG = 89 50 4E 47 0D 0A 1A 0A. Too few bytes -> kUnknown.
ImageFormat detect_image_format(const uint8_t* data, size_t size);

/// Short name of a format: "JPEG", "PNG" or "unknown".
const char* image_format_name(ImageFormat format);

/// Decodes a JPEG or PNG held in memory (`size` bytes at `data`). `what` names the
/// source in error messages (e.g. "cifar10-jpeg.tar.gz:train/cat/0001.jpg").
///
/// Output channels: grey stays 1 channel, colour becomes 3 (RGB).
///  - JPEG: greyscale -> 1; YCbCr or RGB -> 3. CMYK/YCCK (Adobe) JPEGs are rejected.
///    Decoded with libjpeg's defaults (accurate integer IDCT, fancy upsampling).
///  - PNG: grey (any bit depth) -> 1; RGB and palette -> 3. The alpha channel of
///    grey+alpha and RGBA images, and transparency (tRNS) of palette, grey and RGB
///    images, is discarded, not composited: each pixel keeps its stored colour
///    whatever its opacity. 16-bit samples are scaled to 8 bits with rounding,
///    round(v * 255 / 65535). Sample values are returned as stored: gAMA, cHRM,
///    sRGB, iCCP and sBIT chunks are ignored (no colour management).
///
/// Throws DataError, naming `what` and the problem, for: empty input; an unknown
/// format (the message lists the supported formats and the first bytes in hex);
/// corrupt, truncated or unsupported data (the library's message is included);
/// an image over `limits` (checked before allocating). Data after the end of the
/// image (after a JPEG's EOI marker or a PNG's IEND chunk) is ignored. Note that
/// JPEG has no checksum: damage to entropy-coded data is only detected when it
/// breaks the code structure, so some corruptions decode to wrong pixels.
Image decode_image(const uint8_t* data, size_t size, const std::string& what, const ImageLimits& limits = {});

/// The same for bytes held in a vector.
Image decode_image(const std::vector<uint8_t>& bytes, const std::string& what, const ImageLimits& limits = {});

/// Returns `image` with `channels` (1 or 3) channels: grey -> RGB replicates the
/// value; RGB -> grey is ITU-R BT.601 luma in 16-bit fixed point, rounded to nearest:
/// (19595 R + 38470 G + 7471 B + 32768) >> 16 (the same integers as Pillow's
/// convert("L"); white stays 255). Same channel count -> a copy.
/// Throws UsageError for `channels` other than 1 or 3 or an inconsistent `image`.
Image convert_channels(const Image& image, int64_t channels);

/// Encodes a grey or RGB image as a lossless 8-bit PNG (zlib's default level).
/// Throws UsageError for an inconsistent image (channels not 1 or 3, a pixel
/// count that does not match the dimensions, an empty image).
std::vector<uint8_t> encode_png(const Image& image);

/// Encodes a grey or RGB image as a baseline JFIF JPEG with `quality` 1..100.
/// Colour images are stored as YCbCr, by default with full-resolution chroma
/// (4:4:4); `subsample_chroma` = true halves chroma in both directions (4:2:0),
/// the libjpeg default, for smaller files. Dimensions are limited to 65500 by JPEG.
/// Throws UsageError for an inconsistent image or an out-of-range quality.
std::vector<uint8_t> encode_jpeg(const Image& image, int quality = 95, bool subsample_chroma = false);

}  // namespace liondg
