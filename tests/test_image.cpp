// Image decoding and encoding (no torch): PNG and JPEG round trips, PNG colour
// types written by libpng itself, format detection, every kind of bad input,
// size limits, channel conversion and concurrent decoding.

#include <liondg/data/image.h>
#include <liondg/errors.h>

#include "expect.h"

#include <gtest/gtest.h>
#include <cstdio>  // before jpeglib.h, which uses FILE without including it
#include <jpeglib.h>
#include <png.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <csetjmp>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace liondg {
namespace {

constexpr int64_t kSizes[][2] = {{1, 1}, {1, 7}, {7, 1}, {3, 5}, {13, 17}, {32, 32}, {33, 65}, {100, 37}, {256, 256}};
constexpr char kWhat[] = "fixtures.tar.gz:train/cat/0001.img";

using testing::expect_data_error;

void expect_decode_error(const std::vector<uint8_t>& bytes, const std::vector<std::string>& needles,
                         const ImageLimits& limits = {}) {
  std::vector<std::string> all = needles;
  all.push_back(kWhat);
  expect_data_error([&] { decode_image(bytes, kWhat, limits); }, all);
}

// A smooth image (what JPEG is made for): slow sinusoids plus a ramp.
Image smooth_image(int64_t height, int64_t width, int64_t channels) {
  Image image{height, width, channels, std::vector<uint8_t>(static_cast<size_t>(height * width * channels))};
  for (int64_t y = 0; y < height; ++y) {
    for (int64_t x = 0; x < width; ++x) {
      for (int64_t c = 0; c < channels; ++c) {
        const double v = 108.0 + 60.0 * std::sin(0.11 * x + 0.9 * c) * std::cos(0.07 * y - 0.5 * c) +
                         40.0 * static_cast<double>(x + y) / static_cast<double>(width + height);
        image.pixels[static_cast<size_t>((y * width + x) * channels + c)] =
            static_cast<uint8_t>(std::lround(std::clamp(v, 0.0, 255.0)));
      }
    }
  }
  return image;
}

// Uniform random bytes: the hardest case for a lossless codec.
Image noise_image(int64_t height, int64_t width, int64_t channels, uint32_t seed) {
  std::mt19937 rng(seed);
  Image image{height, width, channels, std::vector<uint8_t>(static_cast<size_t>(height * width * channels))};
  for (auto& p : image.pixels) p = static_cast<uint8_t>(rng());
  return image;
}

struct ErrorStats {
  double mean = 0;
  int max = 0;
};

ErrorStats compare(const Image& a, const Image& b) {
  EXPECT_EQ(a.pixels.size(), b.pixels.size());
  ErrorStats s;
  const size_t n = std::min(a.pixels.size(), b.pixels.size());
  double sum = 0;
  for (size_t i = 0; i < n; ++i) {
    const int e = std::abs(static_cast<int>(a.pixels[i]) - static_cast<int>(b.pixels[i]));
    sum += e;
    s.max = std::max(s.max, e);
  }
  s.mean = n > 0 ? sum / static_cast<double>(n) : 0.0;
  return s;
}

// ------------------------------------------------------------ fixture writers

// A PNG written by libpng's simplified API. `colormap` only for colour-mapped formats.
std::vector<uint8_t> simplified_png(uint32_t width, uint32_t height, uint32_t format, const void* pixels,
                                    const void* colormap = nullptr, uint32_t colormap_entries = 0) {
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  image.width = width;
  image.height = height;
  image.format = format;
  image.colormap_entries = colormap_entries;
  png_alloc_size_t size = PNG_IMAGE_PNG_SIZE_MAX(image);
  std::vector<uint8_t> out(size);
  const int ok = png_image_write_to_memory(&image, out.data(), &size, /*convert_to_8_bit=*/0, pixels,
                                           /*row_stride=*/0, colormap);
  EXPECT_NE(ok, 0) << image.message;
  png_image_free(&image);
  out.resize(ok != 0 ? size : 0);
  return out;
}

// A PNG written by libpng's full API, for what the simplified API cannot write:
// bit depths 1, 2, 4 and 16 as given, Adam7 interlacing, tRNS and gAMA chunks.
struct ClassicPng {
  uint32_t width = 0, height = 0;
  int bit_depth = 8;
  int color_type = PNG_COLOR_TYPE_GRAY;
  bool interlaced = false;
  std::vector<uint8_t> rows;     // packed rows as stored (16-bit big-endian)
  std::vector<png_color> palette;
  std::vector<uint8_t> trns_alpha;  // palette tRNS
  bool trns_grey = false;           // grey tRNS
  uint16_t trns_grey_value = 0;
  double gamma = 0;                 // > 0: write a gAMA chunk
};

void append_to_vector(png_structp png, png_bytep data, png_size_t length) {
  auto* out = static_cast<std::vector<uint8_t>*>(png_get_io_ptr(png));
  out->insert(out->end(), data, data + length);
}

// Only trivially destructible locals here (setjmp).
bool write_classic_png_rows(const ClassicPng* spec, std::vector<uint8_t>* out) {
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png != nullptr ? png_create_info_struct(png) : nullptr;
  if (info == nullptr) return false;
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    return false;
  }
  png_set_write_fn(png, out, append_to_vector, nullptr);
  png_set_IHDR(png, info, spec->width, spec->height, spec->bit_depth, spec->color_type,
               spec->interlaced ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  if (!spec->palette.empty()) {
    png_set_PLTE(png, info, spec->palette.data(), static_cast<int>(spec->palette.size()));
  }
  if (!spec->trns_alpha.empty()) {
    png_set_tRNS(png, info, spec->trns_alpha.data(), static_cast<int>(spec->trns_alpha.size()), nullptr);
  }
  if (spec->trns_grey) {
    png_color_16 colour{};
    colour.gray = spec->trns_grey_value;
    png_set_tRNS(png, info, nullptr, /*num_trans=*/0, &colour);
  }
  if (spec->gamma > 0) png_set_gAMA(png, info, spec->gamma);
  png_write_info(png, info);
  const int passes = png_set_interlace_handling(png);
  const size_t stride = png_get_rowbytes(png, info);
  for (int pass = 0; pass < passes; ++pass) {
    for (uint32_t y = 0; y < spec->height; ++y) png_write_row(png, spec->rows.data() + y * stride);
  }
  png_write_end(png, info);
  png_destroy_write_struct(&png, &info);
  return true;
}

std::vector<uint8_t> classic_png(const ClassicPng& spec) {
  std::vector<uint8_t> out;
  EXPECT_TRUE(write_classic_png_rows(&spec, &out));
  return out;
}

// A JPEG written by libjpeg directly, for what encode_jpeg does not write: CMYK
// and YCCK, RGB stored without the YCbCr transform, progressive scans.
struct JpegFixture {
  J_COLOR_SPACE in_space = JCS_RGB;
  J_COLOR_SPACE jpeg_space = JCS_YCbCr;
  int components = 3;
  bool progressive = false;
};

struct FixtureJpegError {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
};

void fixture_jpeg_error_exit(j_common_ptr cinfo) {
  std::longjmp(reinterpret_cast<FixtureJpegError*>(cinfo->err)->jump, 1);
}

// Only trivially destructible locals here (setjmp). *out is malloc'ed by libjpeg.
bool write_fixture_jpeg(const JpegFixture* spec, int width, int height, const uint8_t* pixels, unsigned char** out,
                        unsigned long* out_size) {
  jpeg_compress_struct cinfo{};
  FixtureJpegError error{};
  cinfo.err = jpeg_std_error(&error.mgr);
  error.mgr.error_exit = fixture_jpeg_error_exit;
  if (setjmp(error.jump)) {
    jpeg_destroy_compress(&cinfo);
    return false;
  }
  jpeg_create_compress(&cinfo);
  jpeg_mem_dest(&cinfo, out, out_size);
  cinfo.image_width = static_cast<JDIMENSION>(width);
  cinfo.image_height = static_cast<JDIMENSION>(height);
  cinfo.input_components = spec->components;
  cinfo.in_color_space = spec->in_space;
  jpeg_set_defaults(&cinfo);
  jpeg_set_colorspace(&cinfo, spec->jpeg_space);
  jpeg_set_quality(&cinfo, /*quality=*/95, /*force_baseline=*/TRUE);
  if (spec->progressive) jpeg_simple_progression(&cinfo);
  jpeg_start_compress(&cinfo, /*write_all_tables=*/TRUE);
  const size_t stride = static_cast<size_t>(width) * static_cast<size_t>(spec->components);
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW row = const_cast<JSAMPLE*>(pixels + cinfo.next_scanline * stride);
    jpeg_write_scanlines(&cinfo, &row, /*num_lines=*/1);
  }
  jpeg_finish_compress(&cinfo);
  jpeg_destroy_compress(&cinfo);
  return true;
}

std::vector<uint8_t> fixture_jpeg(const JpegFixture& spec, const Image& image) {
  unsigned char* buffer = nullptr;
  unsigned long size = 0;
  const bool ok = write_fixture_jpeg(&spec, static_cast<int>(image.width), static_cast<int>(image.height),
                                     image.pixels.data(), &buffer, &size);
  EXPECT_TRUE(ok);
  std::vector<uint8_t> out;
  if (ok) out.assign(buffer, buffer + size);
  std::free(buffer);
  return out;
}

// Offset of the first byte after marker FF `code`'s segment header, or 0.
size_t find_marker(const std::vector<uint8_t>& jpeg, uint8_t code) {
  for (size_t i = 2; i + 3 < jpeg.size(); ++i) {
    if (jpeg[i] == 0xFF && jpeg[i + 1] == code) return i + 2;
  }
  return 0;
}

// Entropy-coded data of a baseline single-scan JPEG: [begin, end).
std::pair<size_t, size_t> scan_data(const std::vector<uint8_t>& jpeg) {
  const size_t sos = find_marker(jpeg, /*SOS=*/0xDA);
  EXPECT_GT(sos, 0u);
  const size_t begin = sos + ((size_t{jpeg[sos]} << 8) | jpeg[sos + 1]);
  return {begin, jpeg.size() - 2};  // up to the EOI marker
}

// CRC-32 of PNG chunks (ISO 3309), bitwise: tests only.
uint32_t chunk_crc32(const uint8_t* data, size_t size) {
  uint32_t crc = 0xFFFFFFFFu;
  for (size_t i = 0; i < size; ++i) {
    crc ^= data[i];
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

void put_be32(std::vector<uint8_t>* out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out->push_back(static_cast<uint8_t>(v >> shift));
}

// A PNG chunk with a valid CRC; `declared_length` (if set) replaces the true length.
std::vector<uint8_t> png_chunk(const char (&type)[5], const std::vector<uint8_t>& data,
                               int64_t declared_length = -1) {
  std::vector<uint8_t> out;
  put_be32(&out, static_cast<uint32_t>(declared_length >= 0 ? declared_length : static_cast<int64_t>(data.size())));
  out.insert(out.end(), type, type + 4);
  out.insert(out.end(), data.begin(), data.end());
  put_be32(&out, chunk_crc32(out.data() + 4, out.size() - 4));
  return out;
}

// PNG signature + an IHDR chunk (8-bit RGB) with a valid CRC, and nothing else.
std::vector<uint8_t> png_ihdr_only(uint32_t width, uint32_t height) {
  std::vector<uint8_t> out = {0x89, 'P', 'N', 'G', 0x0D, 0x0A, 0x1A, 0x0A};
  std::vector<uint8_t> ihdr;
  put_be32(&ihdr, width);
  put_be32(&ihdr, height);
  ihdr.insert(ihdr.end(), {/*bit depth*/ 8, /*colour type RGB*/ 2, /*compression*/ 0, /*filter*/ 0, /*interlace*/ 0});
  const auto chunk = png_chunk("IHDR", ihdr);
  out.insert(out.end(), chunk.begin(), chunk.end());
  return out;
}

// `png` with `chunk` inserted right after IHDR (offset 33) or before IEND (at the end).
std::vector<uint8_t> with_chunk(std::vector<uint8_t> png, const std::vector<uint8_t>& chunk, bool after_image) {
  constexpr size_t kEndOfIhdr = 33;
  constexpr size_t kIendBytes = 12;
  const size_t at = after_image ? png.size() - kIendBytes : kEndOfIhdr;
  png.insert(png.begin() + static_cast<std::ptrdiff_t>(at), chunk.begin(), chunk.end());
  return png;
}

// Peak resident memory of this process so far, in MiB.
int64_t peak_rss_mib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss / 1024;  // Linux reports KiB
}

// ------------------------------------------------------------ format detection

TEST(ImageFormat, DetectsJpegAndPngFromMagicBytes) {
  const Image image = smooth_image(/*height=*/8, /*width=*/8, /*channels=*/3);
  const auto jpeg = encode_jpeg(image);
  const auto png = encode_png(image);
  EXPECT_EQ(detect_image_format(jpeg.data(), jpeg.size()), ImageFormat::kJpeg);
  EXPECT_EQ(detect_image_format(png.data(), png.size()), ImageFormat::kPng);
  // Only the leading bytes count, and too few bytes are unknown.
  EXPECT_EQ(detect_image_format(jpeg.data(), 3), ImageFormat::kJpeg);
  EXPECT_EQ(detect_image_format(jpeg.data(), 2), ImageFormat::kUnknown);
  EXPECT_EQ(detect_image_format(png.data(), 8), ImageFormat::kPng);
  EXPECT_EQ(detect_image_format(png.data(), 7), ImageFormat::kUnknown);
  EXPECT_EQ(detect_image_format(nullptr, 0), ImageFormat::kUnknown);
  const std::vector<uint8_t> gif = {'G', 'I', 'F', '8', '9', 'a', 1, 0, 1, 0};
  EXPECT_EQ(detect_image_format(gif.data(), gif.size()), ImageFormat::kUnknown);
  EXPECT_STREQ(image_format_name(ImageFormat::kJpeg), "JPEG");
  EXPECT_STREQ(image_format_name(ImageFormat::kPng), "PNG");
}

// ------------------------------------------------------------ PNG

TEST(ImagePng, RoundTripIsExactForGreyAndRgb) {
  uint32_t seed = 1;
  for (const auto& hw : kSizes) {
    for (int64_t channels : {1, 3}) {
      for (const Image& image : {noise_image(hw[0], hw[1], channels, seed++), smooth_image(hw[0], hw[1], channels)}) {
        const Image decoded = decode_image(encode_png(image), kWhat);
        EXPECT_EQ(decoded.height, image.height);
        EXPECT_EQ(decoded.width, image.width);
        EXPECT_EQ(decoded.channels, channels);
        EXPECT_EQ(decoded.pixels, image.pixels) << hw[0] << "x" << hw[1] << "x" << channels;
      }
    }
  }
}

TEST(ImagePng, AlphaIsDiscardedNotComposited) {
  // RGBA with every alpha value, including fully transparent pixels whose colour
  // would vanish if alpha were composited or premultiplied.
  constexpr uint32_t kWidth = 16;
  constexpr uint32_t kHeight = 16;
  const Image rgb = noise_image(kHeight, kWidth, 3, /*seed=*/7);
  std::vector<uint8_t> rgba, grey_alpha;
  for (uint32_t i = 0; i < kWidth * kHeight; ++i) {
    const uint8_t alpha = static_cast<uint8_t>(i);  // 0..255
    rgba.insert(rgba.end(), {rgb.pixels[3 * i], rgb.pixels[3 * i + 1], rgb.pixels[3 * i + 2], alpha});
    grey_alpha.insert(grey_alpha.end(), {rgb.pixels[3 * i], alpha});
  }
  const Image from_rgba = decode_image(simplified_png(kWidth, kHeight, PNG_FORMAT_RGBA, rgba.data()), kWhat);
  EXPECT_EQ(from_rgba.channels, 3);
  EXPECT_EQ(from_rgba.pixels, rgb.pixels);

  const Image from_ga = decode_image(simplified_png(kWidth, kHeight, PNG_FORMAT_GA, grey_alpha.data()), kWhat);
  EXPECT_EQ(from_ga.channels, 1);
  ASSERT_EQ(from_ga.pixels.size(), size_t{kWidth * kHeight});
  for (uint32_t i = 0; i < kWidth * kHeight; ++i) EXPECT_EQ(from_ga.pixels[i], rgb.pixels[3 * i]) << i;
}

TEST(ImagePng, PaletteDecodesToRgbWithAndWithoutTransparency) {
  constexpr uint32_t kWidth = 9;
  constexpr uint32_t kHeight = 5;
  constexpr uint32_t kEntries = 7;
  std::vector<uint8_t> rgb_map, rgba_map;
  for (uint32_t e = 0; e < kEntries; ++e) {
    const uint8_t r = static_cast<uint8_t>(30 * e);
    const uint8_t g = static_cast<uint8_t>(255 - 20 * e);
    const uint8_t b = static_cast<uint8_t>(e * e);
    rgb_map.insert(rgb_map.end(), {r, g, b});
    rgba_map.insert(rgba_map.end(), {r, g, b, static_cast<uint8_t>(e == 0 ? 0 : 40 * e)});
  }
  std::vector<uint8_t> indices(kWidth * kHeight);
  for (size_t i = 0; i < indices.size(); ++i) indices[i] = static_cast<uint8_t>((i * 5) % kEntries);
  std::vector<uint8_t> expected;
  for (uint8_t index : indices) expected.insert(expected.end(), &rgb_map[3 * index], &rgb_map[3 * index] + 3);

  for (bool with_alpha : {false, true}) {
    const auto png =
        with_alpha ? simplified_png(kWidth, kHeight, PNG_FORMAT_RGBA_COLORMAP, indices.data(), rgba_map.data(), kEntries)
                   : simplified_png(kWidth, kHeight, PNG_FORMAT_RGB_COLORMAP, indices.data(), rgb_map.data(), kEntries);
    const Image image = decode_image(png, kWhat);
    EXPECT_EQ(image.channels, 3) << with_alpha;
    EXPECT_EQ(image.pixels, expected) << with_alpha;
  }

  // A 2-bit palette image with tRNS, written by the full API.
  ClassicPng spec;
  spec.width = 5;
  spec.height = 2;
  spec.bit_depth = 2;
  spec.color_type = PNG_COLOR_TYPE_PALETTE;
  spec.palette = {{10, 20, 30}, {40, 50, 60}, {70, 80, 90}, {200, 210, 220}};
  spec.trns_alpha = {0, 128};
  // Indices 0 1 2 3 0 / 3 2 1 0 3, two bits each, padded to whole bytes.
  spec.rows = {0b00011011, 0b00000000, 0b11100100, 0b11000000};
  const Image image = decode_image(classic_png(spec), kWhat);
  EXPECT_EQ(image.channels, 3);
  const std::vector<uint8_t> want = {10, 20, 30, 40, 50, 60, 70, 80, 90, 200, 210, 220, 10, 20, 30,
                                     200, 210, 220, 70, 80, 90, 40, 50, 60, 10, 20, 30, 200, 210, 220};
  EXPECT_EQ(image.pixels, want);
}

TEST(ImagePng, SixteenBitScalesToEightBitWithRounding) {
  // round(v * 255 / 65535) for v = k * 257 (exact 8-bit values) and values in between.
  const std::vector<uint16_t> values = {0, 1, 128, 129, 255, 256, 257, 385, 386, 32767, 32768, 65278, 65535};
  const uint32_t width = static_cast<uint32_t>(values.size());
  auto expected8 = [](uint16_t v) { return static_cast<uint8_t>((uint32_t{v} * 255 + 32767) / 65535); };

  // Simplified API, linear 16-bit grey (writes a gAMA of 1.0, which the decoder ignores).
  const auto grey16 = simplified_png(width, /*height=*/1, PNG_FORMAT_LINEAR_Y, values.data());
  const Image grey = decode_image(grey16, kWhat);
  ASSERT_EQ(grey.channels, 1);
  ASSERT_EQ(grey.pixels.size(), values.size());
  for (size_t i = 0; i < values.size(); ++i) EXPECT_EQ(grey.pixels[i], expected8(values[i])) << values[i];

  // Every 16-bit value, as a 256 x 256 grey image.
  std::vector<uint16_t> all(size_t{1} << 16);
  for (size_t v = 0; v < all.size(); ++v) all[v] = static_cast<uint16_t>(v);
  const auto every_png = simplified_png(/*width=*/256, /*height=*/256, PNG_FORMAT_LINEAR_Y, all.data());
  const Image every = decode_image(every_png, kWhat);
  ASSERT_EQ(every.pixels.size(), all.size());
  int wrong = 0;
  for (size_t v = 0; v < all.size(); ++v) wrong += every.pixels[v] != expected8(all[v]);
  EXPECT_EQ(wrong, 0);

  // Full API, 16-bit RGBA, interlaced, alpha varying: every colour sample survives.
  ClassicPng spec;
  spec.width = width;
  spec.height = 3;
  spec.bit_depth = 16;
  spec.color_type = PNG_COLOR_TYPE_RGB_ALPHA;
  spec.interlaced = true;
  std::vector<uint8_t> want;
  for (uint32_t y = 0; y < spec.height; ++y) {
    for (uint32_t x = 0; x < width; ++x) {
      for (uint32_t c = 0; c < 4; ++c) {
        const uint16_t v = c == 3 ? static_cast<uint16_t>(x * 5000) : values[(x + y + c) % values.size()];
        spec.rows.push_back(static_cast<uint8_t>(v >> 8));
        spec.rows.push_back(static_cast<uint8_t>(v & 0xFF));
        if (c < 3) want.push_back(expected8(v));
      }
    }
  }
  const Image rgb = decode_image(classic_png(spec), kWhat);
  EXPECT_EQ(rgb.channels, 3);
  EXPECT_EQ(rgb.pixels, want);
}

TEST(ImagePng, LowBitDepthGreyInterlacingTransparencyAndGammaKeepStoredValues) {
  // 1-bit grey: 0 -> 0, 1 -> 255.
  ClassicPng one_bit;
  one_bit.width = 10;
  one_bit.height = 2;
  one_bit.bit_depth = 1;
  one_bit.rows = {0b10110000, 0b01000000, 0b01001111, 0b11000000};
  const Image bits = decode_image(classic_png(one_bit), kWhat);
  EXPECT_EQ(bits.channels, 1);
  const std::vector<uint8_t> want_bits = {255, 0, 255, 255, 0, 0, 0, 0, 0, 255,
                                          0, 255, 0, 0, 255, 255, 255, 255, 255, 255};
  EXPECT_EQ(bits.pixels, want_bits);

  // 4-bit grey with a tRNS colour and a gAMA chunk of 1.0: values scale by 17, the
  // transparent value keeps its grey level, the gamma is not applied.
  ClassicPng four_bit;
  four_bit.width = 4;
  four_bit.height = 1;
  four_bit.bit_depth = 4;
  four_bit.rows = {0x0F, 0x79};
  four_bit.trns_grey = true;
  four_bit.trns_grey_value = 7;
  four_bit.gamma = 1.0;
  const Image nibbles = decode_image(classic_png(four_bit), kWhat);
  EXPECT_EQ(nibbles.channels, 1);
  EXPECT_EQ(nibbles.pixels, (std::vector<uint8_t>{0, 255, 7 * 17, 9 * 17}));

  // 8-bit RGB, Adam7-interlaced, with a gAMA chunk: exact stored values.
  const Image rgb = noise_image(/*height=*/19, /*width=*/23, /*channels=*/3, /*seed=*/3);
  ClassicPng interlaced;
  interlaced.width = 23;
  interlaced.height = 19;
  interlaced.color_type = PNG_COLOR_TYPE_RGB;
  interlaced.interlaced = true;
  interlaced.gamma = 0.8;
  interlaced.rows = rgb.pixels;
  const Image decoded = decode_image(classic_png(interlaced), kWhat);
  EXPECT_EQ(decoded.channels, 3);
  EXPECT_EQ(decoded.pixels, rgb.pixels);
}

TEST(ImagePng, AncillaryChunksAreSkippedAndTheirDamageIgnored) {
  const Image image = noise_image(/*height=*/6, /*width=*/7, /*channels=*/3, /*seed=*/12);
  const auto png = encode_png(image);
  const std::vector<uint8_t> text = {'C', 'o', 'm', 'm', 'e', 'n', 't', 0, 'h', 'i'};
  auto bad_crc = png_chunk("tEXt", text);
  bad_crc.back() ^= 0xFF;
  for (bool after_image : {false, true}) {
    EXPECT_EQ(decode_image(with_chunk(png, png_chunk("tEXt", text), after_image), kWhat).pixels, image.pixels);
    EXPECT_EQ(decode_image(with_chunk(png, bad_crc, after_image), kWhat).pixels, image.pixels);
    // A private chunk libpng does not know, ancillary (lower-case first letter).
    EXPECT_EQ(decode_image(with_chunk(png, png_chunk("prIv", {1, 2, 3}), after_image), kWhat).pixels, image.pixels);
  }
  // An unknown critical chunk (upper-case first letter) cannot be skipped.
  expect_decode_error(with_chunk(png, png_chunk("CRIT", {1, 2, 3}), /*after_image=*/false), {"CRIT"});
}

// ------------------------------------------------------------ JPEG

TEST(ImageJpeg, RoundTripWithinMeasuredTolerance) {
  // Measured with libjpeg-turbo 2.1.5 on smooth_image over kSizes (worst case):
  //   q95 4:4:4 RGB: mean 1.07 (3x5), 0.62 on 256x256; max 5.
  //   q95 4:2:0 RGB: mean 1.42 (3x5), 0.73 on 256x256; max 7.
  //   q95 grey:      mean 0.27; max 2.
  struct Case {
    int64_t channels;
    bool subsample;
    double max_mean;
    int max_error;
  };
  for (const Case& c : {Case{3, false, 1.25, 6}, Case{3, true, 1.75, 10}, Case{1, false, 0.5, 3}}) {
    for (const auto& hw : kSizes) {
      const Image image = smooth_image(hw[0], hw[1], c.channels);
      const Image decoded = decode_image(encode_jpeg(image, /*quality=*/95, c.subsample), kWhat);
      ASSERT_EQ(decoded.height, image.height);
      ASSERT_EQ(decoded.width, image.width);
      ASSERT_EQ(decoded.channels, c.channels);
      const ErrorStats e = compare(image, decoded);
      EXPECT_LT(e.mean, c.max_mean) << hw[0] << "x" << hw[1] << "x" << c.channels << " 4:2:0=" << c.subsample;
      EXPECT_LE(e.max, c.max_error) << hw[0] << "x" << hw[1] << "x" << c.channels << " 4:2:0=" << c.subsample;
    }
  }
}

TEST(ImageJpeg, EncoderWritesRequestedSamplingAndQuality) {
  const Image image = smooth_image(/*height=*/64, /*width=*/64, /*channels=*/3);
  // SOF0 component specs: id, sampling (h << 4 | v), table; 3 components from byte 8.
  auto sampling = [](const std::vector<uint8_t>& jpeg) {
    const size_t sof = find_marker(jpeg, /*SOF0=*/0xC0);
    EXPECT_GT(sof, 0u);
    return std::vector<uint8_t>{jpeg[sof + 9], jpeg[sof + 12], jpeg[sof + 15]};
  };
  const auto full = encode_jpeg(image);
  const auto sub = encode_jpeg(image, /*quality=*/95, /*subsample_chroma=*/true);
  EXPECT_EQ(sampling(full), (std::vector<uint8_t>{0x11, 0x11, 0x11}));
  EXPECT_EQ(sampling(sub), (std::vector<uint8_t>{0x22, 0x11, 0x11}));
  EXPECT_LT(sub.size(), full.size());
  EXPECT_LT(encode_jpeg(image, /*quality=*/50).size(), full.size());
  for (int quality : {1, 100}) {
    const Image decoded = decode_image(encode_jpeg(image, quality), kWhat);
    EXPECT_EQ(decoded.pixels.size(), image.pixels.size());
  }
  for (int quality : {0, 101, -5}) EXPECT_THROW(encode_jpeg(image, quality), UsageError);
}

TEST(ImageJpeg, DecodesRgbStoredAndProgressiveJpegs) {
  const Image image = smooth_image(/*height=*/40, /*width=*/24, /*channels=*/3);
  JpegFixture rgb_stored;
  rgb_stored.jpeg_space = JCS_RGB;  // no YCbCr transform (Adobe marker, transform 0)
  JpegFixture progressive;
  progressive.progressive = true;
  for (const JpegFixture& spec : {rgb_stored, progressive}) {
    const Image decoded = decode_image(fixture_jpeg(spec, image), kWhat);
    EXPECT_EQ(decoded.channels, 3);
    const ErrorStats e = compare(image, decoded);
    EXPECT_LT(e.mean, 2.0);
    EXPECT_LE(e.max, 12);
  }
}

TEST(ImageJpeg, RejectsCmykAndYcck) {
  const Image cmyk = noise_image(/*height=*/8, /*width=*/8, /*channels=*/4, /*seed=*/5);
  for (J_COLOR_SPACE space : {JCS_CMYK, JCS_YCCK}) {
    JpegFixture spec;
    spec.in_space = JCS_CMYK;
    spec.jpeg_space = space;
    spec.components = 4;
    expect_decode_error(fixture_jpeg(spec, cmyk), {"CMYK/YCCK JPEG is not supported"});
  }
}

// ------------------------------------------------------------ bad input

TEST(ImageErrors, EmptyInput) {
  expect_decode_error({}, {"empty input"});
  expect_data_error([] { decode_image(nullptr, 0, kWhat); }, {kWhat, "empty input"});
}

TEST(ImageErrors, UnknownFormatListsSupportedFormatsAndLeadingBytes) {
  expect_decode_error({'G', 'I', 'F', '8', '9', 'a', 0x01, 0x00},
                      {"unknown image format", "JPEG, PNG", "47 49 46 38 39 61 01 00"});
  std::mt19937 rng(/*seed=*/11);
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<uint8_t> bytes(1 + rng() % 300);
    for (auto& b : bytes) b = static_cast<uint8_t>(rng());
    bytes[0] = 0x00;  // never a JPEG or PNG signature
    expect_decode_error(bytes, {"unknown image format"});
  }
}

TEST(ImageErrors, TruncatedJpegAtEveryKindOfCutPoint) {
  for (bool progressive : {false, true}) {
    JpegFixture spec;
    spec.progressive = progressive;
    const auto jpeg = fixture_jpeg(spec, smooth_image(/*height=*/48, /*width=*/40, /*channels=*/3));
    const size_t n = jpeg.size();
    // Inside the signature, the header segments, the scan data, and the EOI marker.
    for (size_t cut : {size_t{3}, size_t{4}, size_t{20}, size_t{100}, n / 3, n / 2, 2 * n / 3, n - 10, n - 2, n - 1}) {
      const std::vector<uint8_t> truncated(jpeg.begin(), jpeg.begin() + static_cast<std::ptrdiff_t>(cut));
      SCOPED_TRACE("cut at " + std::to_string(cut) + " of " + std::to_string(n));
      expect_decode_error(truncated, {"JPEG"});
    }
  }
  // The premature-end case is a libjpeg warning, reported as an error.
  const auto jpeg = encode_jpeg(smooth_image(/*height=*/32, /*width=*/32, /*channels=*/3));
  expect_decode_error(std::vector<uint8_t>(jpeg.begin(), jpeg.end() - 2), {"Premature end of JPEG file"});
}

TEST(ImageErrors, CorruptedJpegEntropyData) {
  const auto jpeg = encode_jpeg(smooth_image(/*height=*/64, /*width=*/64, /*channels=*/3));
  const auto [begin, end] = scan_data(jpeg);
  ASSERT_GT(end, begin + 128);
  const size_t middle = (begin + end) / 2;

  // Damage that always breaks the entropy code: libjpeg only warns ("Corrupt JPEG
  // data: ...") and would return a picture; the warning is an error here.
  std::vector<uint8_t> marker = jpeg;  // a restart marker where none belongs
  marker[middle] = 0xFF;
  marker[middle + 1] = 0xD3;
  expect_decode_error(marker, {"corrupt or truncated JPEG data", "Corrupt JPEG data"});
  std::mt19937 rng(/*seed=*/2);
  std::vector<uint8_t> garbage = jpeg;  // the second half of the scan replaced by noise
  for (size_t i = middle; i < end; ++i) garbage[i] = static_cast<uint8_t>(rng() % 0xFF);  // no 0xFF: no markers
  expect_decode_error(garbage, {"corrupt or truncated JPEG data"});

  // JPEG has no checksum, and Huffman codes resynchronize: a few flipped bytes are
  // caught only when the decoder's bit count ends up off by more than it reads ahead.
  // Measured with libjpeg-turbo 2.1.5 over every offset of this scan: 8 flipped bytes
  // (XOR 0xFF) caught 42% of the time, 1 flipped byte 26%. Undetected ones decode
  // to wrong pixels of the right size; none may crash.
  constexpr int kTrials = 100;
  int caught = 0;
  for (int trial = 0; trial < kTrials; ++trial) {
    const size_t offset = begin + (end - 8 - begin) * static_cast<size_t>(trial) / kTrials;
    std::vector<uint8_t> bad = jpeg;
    for (size_t i = offset; i < offset + 8; ++i) bad[i] ^= 0xFF;
    try {
      const Image image = decode_image(bad, kWhat);
      EXPECT_EQ(image.pixels.size(), size_t{64 * 64 * 3});
    } catch (const DataError& e) {
      ++caught;
      EXPECT_NE(std::string(e.what()).find(kWhat), std::string::npos) << e.what();
    }
  }
  EXPECT_GE(caught, kTrials / 4);
}

TEST(ImageErrors, TruncatedAndCorruptPng) {
  for (int64_t channels : {1, 3}) {
    const auto png = encode_png(noise_image(20, 30, channels, /*seed=*/9));
    const size_t n = png.size();
    // Signature only, inside IHDR, after IHDR, inside the image data, no IEND, inside IEND.
    for (size_t cut : {size_t{8}, size_t{20}, size_t{33}, size_t{40}, n / 2, n - 20, n - 12, n - 1}) {
      const std::vector<uint8_t> truncated(png.begin(), png.begin() + static_cast<std::ptrdiff_t>(cut));
      SCOPED_TRACE("cut at " + std::to_string(cut) + " of " + std::to_string(n));
      expect_decode_error(truncated, {"PNG"});
    }
    // A flipped byte is caught by the chunk CRC (IHDR), or in image data by zlib's
    // Adler-32 check, which libpng meets before the chunk's CRC.
    std::vector<uint8_t> bad_header = png;
    bad_header[18] ^= 0x5A;  // inside the width: would claim 23070 pixels
    expect_decode_error(bad_header, {"IHDR: CRC error"});
    for (size_t at : {size_t{60}, n / 2, n - 20}) {  // inside the image data
      std::vector<uint8_t> bad = png;
      bad[at] ^= 0x5A;
      SCOPED_TRACE("flipped byte " + std::to_string(at));
      expect_decode_error(bad, {"corrupt or truncated PNG data"});
    }
  }
}

// ------------------------------------------------------------ limits

TEST(ImageLimits, OversizedPngHeaderRejectedBeforeAllocating) {
  // 100000 x 100000 RGB would need 30 GB: it must be refused from the header alone
  // (an attempt to allocate would throw bad_alloc or abort under a sanitizer).
  expect_decode_error(png_ihdr_only(/*width=*/100000, /*height=*/100000),
                      {"100000 x 100000", "over the limit", "16384 x 16384"});
  // The same file followed by nothing is otherwise just truncated.
  expect_decode_error(png_ihdr_only(/*width=*/16, /*height=*/16), {"truncated"});
  // PNG's largest legal size.
  expect_decode_error(png_ihdr_only(/*width=*/0x7FFFFFFF, /*height=*/0x7FFFFFFF), {"over the limit"});
}

TEST(ImageLimits, OversizedJpegHeaderRejectedBeforeAllocating) {
  auto jpeg = encode_jpeg(smooth_image(/*height=*/16, /*width=*/16, /*channels=*/3));
  const size_t sof = find_marker(jpeg, /*SOF0=*/0xC0);
  ASSERT_GT(sof, 0u);
  for (size_t at : {sof + 3, sof + 5}) {  // height, width: 60000 each
    jpeg[at] = 60000 >> 8;
    jpeg[at + 1] = 60000 & 0xFF;
  }
  expect_decode_error(jpeg, {"60000 x 60000", "over the limit"});
}

TEST(ImageLimits, SmallFilesClaimingHugeContentStayCheap) {
  // libpng 1.6.39 would allocate and zero a text chunk's declared length (up to
  // 2 GiB) before reading it; the decoder skips such chunks unread.
  const int64_t before = peak_rss_mib();
  const auto png = encode_png(smooth_image(/*height=*/4, /*width=*/4, /*channels=*/1));
  for (bool after_image : {false, true}) {
    expect_decode_error(with_chunk(png, png_chunk("tEXt", {'a', 0, 'b'}, /*declared_length=*/0x7FFFFFFF), after_image),
                        {"truncated"});
  }
  // A JPEG header claiming 16384 x 16384 (within the default limits) and ~800
  // bytes of data: output rows are only touched as they are decoded, so this
  // fails fast instead of first clearing 768 MiB.
  for (bool progressive : {false, true}) {
    JpegFixture spec;
    spec.progressive = progressive;
    auto jpeg = fixture_jpeg(spec, smooth_image(/*height=*/24, /*width=*/40, /*channels=*/3));
    const size_t sof = find_marker(jpeg, progressive ? 0xC2 : 0xC0);
    ASSERT_GT(sof, 0u);
    for (size_t at : {sof + 3, sof + 5}) {
      jpeg[at] = 16384 >> 8;
      jpeg[at + 1] = 16384 & 0xFF;
    }
    expect_decode_error(jpeg, {"Corrupt JPEG data"});
  }
  EXPECT_LT(peak_rss_mib() - before, 256) << "peak resident memory grew from " << before << " MiB";
}

TEST(ImageLimits, ConfigurableLimitsApplyToBothFormats) {
  const Image image = smooth_image(/*height=*/48, /*width=*/64, /*channels=*/3);
  for (const auto& bytes : {encode_png(image), encode_jpeg(image)}) {
    expect_decode_error(bytes, {"64 x 48", "over the limit"},
                        ImageLimits{/*max_width=*/63, /*max_height=*/1000, /*max_pixels=*/1 << 20});
    expect_decode_error(bytes, {"over the limit"},
                        ImageLimits{/*max_width=*/1000, /*max_height=*/47, /*max_pixels=*/1 << 20});
    expect_decode_error(bytes, {"over the limit"},
                        ImageLimits{/*max_width=*/1000, /*max_height=*/1000, /*max_pixels=*/64 * 48 - 1});
    const Image exact =
        decode_image(bytes, kWhat, ImageLimits{/*max_width=*/64, /*max_height=*/48, /*max_pixels=*/64 * 48});
    EXPECT_EQ(exact.width, 64);
    EXPECT_EQ(exact.height, 48);
  }
}

// ------------------------------------------------------------ channel conversion

TEST(ImageConvert, GreyToRgbReplicatesAndRgbToGreyUsesRoundedLuma) {
  const Image grey{1, 3, 1, {0, 77, 255}};
  const Image rgb = convert_channels(grey, /*channels=*/3);
  EXPECT_EQ(rgb.channels, 3);
  EXPECT_EQ(rgb.pixels, (std::vector<uint8_t>{0, 0, 0, 77, 77, 77, 255, 255, 255}));
  EXPECT_EQ(convert_channels(rgb, /*channels=*/1).pixels, grey.pixels);  // grey round-trips exactly

  // Pillow's convert("L") gives the same: red 76, green 150, blue 29.
  const Image colours{1, 5, 3, {255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255, 10, 200, 30}};
  const Image luma = convert_channels(colours, /*channels=*/1);
  EXPECT_EQ(luma.channels, 1);
  const uint8_t mixed = static_cast<uint8_t>((19595 * 10 + 38470 * 200 + 7471 * 30 + 32768) >> 16);
  EXPECT_EQ(luma.pixels, (std::vector<uint8_t>{76, 150, 29, 255, mixed}));

  EXPECT_EQ(convert_channels(colours, /*channels=*/3).pixels, colours.pixels);
  EXPECT_THROW(convert_channels(colours, /*channels=*/2), UsageError);
  EXPECT_THROW(convert_channels(Image{2, 2, 3, std::vector<uint8_t>(11)}, /*channels=*/1), UsageError);
}

TEST(ImageEncode, RejectsInconsistentImages) {
  const Image two_channels{2, 2, 2, std::vector<uint8_t>(8)};
  const Image short_pixels{2, 2, 3, std::vector<uint8_t>(11)};
  const Image empty{0, 4, 1, {}};
  for (const Image& bad : {two_channels, short_pixels, empty}) {
    EXPECT_THROW(encode_png(bad), UsageError);
    EXPECT_THROW(encode_jpeg(bad), UsageError);
  }
  EXPECT_THROW(encode_jpeg(Image{1, 70000, 1, std::vector<uint8_t>(70000)}), UsageError);  // JPEG max 65500
}

// ------------------------------------------------------------ threads

TEST(ImageThreads, ConcurrentDecodesGiveIdenticalResults) {
  constexpr int kThreads = 8;
  constexpr int kRounds = 20;
  const auto jpeg = encode_jpeg(smooth_image(/*height=*/96, /*width=*/80, /*channels=*/3));
  const auto png = encode_png(noise_image(/*height=*/64, /*width=*/72, /*channels=*/3, /*seed=*/4));
  std::vector<uint8_t> corrupt(jpeg.begin(), jpeg.end() - 200);
  const Image jpeg_reference = decode_image(jpeg, kWhat);
  const Image png_reference = decode_image(png, kWhat);
  std::atomic<int> mismatches{0};
  std::atomic<int> errors_seen{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int round = 0; round < kRounds; ++round) {
        if (decode_image(jpeg, kWhat).pixels != jpeg_reference.pixels) ++mismatches;
        if (decode_image(png, kWhat).pixels != png_reference.pixels) ++mismatches;
        try {
          decode_image(corrupt, kWhat);
        } catch (const DataError&) {
          ++errors_seen;
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(mismatches.load(), 0);
  EXPECT_EQ(errors_seen.load(), kThreads * kRounds);
}

}  // namespace
}  // namespace liondg
