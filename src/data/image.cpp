// Image decoding and encoding: JPEG through libjpeg-turbo, PNG through libpng.
//
// Both libraries report errors through a callback that must not return, so each
// library call sequence runs in a small function that calls setjmp and holds only
// trivially destructible locals (longjmp past a C++ destructor is undefined
// behaviour); the state lives in plain structs owned by the caller, which frees
// the library objects afterwards and builds strings, vectors and exceptions.

#include <liondg/data/image.h>
#include <liondg/errors.h>

#include <cstdio>  // before jpeglib.h, which uses FILE without including it
#include <jpeglib.h>
#include <jerror.h>
#include <png.h>

#include <algorithm>
#include <csetjmp>
#include <cstdlib>
#include <cstring>
#include <limits>

namespace liondg {
namespace {

constexpr uint8_t kJpegMagic[] = {0xFF, 0xD8, 0xFF};
constexpr uint8_t kPngMagic[] = {0x89, 'P', 'N', 'G', 0x0D, 0x0A, 0x1A, 0x0A};
constexpr size_t kHexPreviewBytes = 16;
// A progressive JPEG needs a handful of scans; thousands of scans in a small file
// is a known way to make decoders spin (TurboJPEG uses the same limit).
constexpr int kMaxJpegScans = 500;
constexpr size_t kJpegSinkInitialBytes = size_t{1} << 16;
constexpr int64_t kMaxJpegDimension = JPEG_MAX_DIMENSION;  // 65500
constexpr int64_t kMaxPngDimension = PNG_UINT_31_MAX;
// BT.601 luma weights in 16-bit fixed point (they sum to 65536).
constexpr uint32_t kLumaR = 19595;
constexpr uint32_t kLumaG = 38470;
constexpr uint32_t kLumaB = 7471;
constexpr uint32_t kLumaRound = 1u << 15;
constexpr int kLumaShift = 16;

static_assert(sizeof(size_t) <= sizeof(unsigned long), "jpeg_mem_src takes the input size as unsigned long");
static_assert(kLumaR + kLumaG + kLumaB == 1u << kLumaShift, "luma weights must sum to one");

std::string hex_preview(const uint8_t* data, size_t size) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  const size_t n = std::min(size, kHexPreviewBytes);
  for (size_t i = 0; i < n; ++i) {
    if (i > 0) out += ' ';
    out += kDigits[data[i] >> 4];
    out += kDigits[data[i] & 0xF];
  }
  if (size > n) out += " ...";
  return out;
}

[[noreturn]] void fail(const std::string& what, const std::string& problem) {
  throw DataError("cannot decode image '" + what + "': " + problem);
}

bool over_limits(int64_t width, int64_t height, const ImageLimits& limits) {
  // width, height < 2^32 each, so the product fits in int64.
  return width > limits.max_width || height > limits.max_height || width * height > limits.max_pixels;
}

void check_limits(int64_t width, int64_t height, const ImageLimits& limits, const char* format,
                  const std::string& what) {
  if (over_limits(width, height, limits)) {
    fail(what, std::string(format) + " image is " + std::to_string(width) + " x " + std::to_string(height) +
                   " pixels (width x height), over the limit of " + std::to_string(limits.max_width) + " x " +
                   std::to_string(limits.max_height) + " and " + std::to_string(limits.max_pixels) +
                   " pixels in total; refusing to allocate it");
  }
}

// Checks that `image` is a well-formed grey or RGB image; returns its byte count.
size_t checked_byte_count(const Image& image, const char* who) {
  const std::string where = std::string(who) + ": ";
  if (image.channels != 1 && image.channels != 3) {
    throw UsageError(where + "images must have 1 (grey) or 3 (RGB) channels, got " + std::to_string(image.channels));
  }
  if (image.height <= 0 || image.width <= 0) {
    throw UsageError(where + "image dimensions must be positive, got " + std::to_string(image.width) + " x " +
                     std::to_string(image.height));
  }
  const uint64_t h = static_cast<uint64_t>(image.height);
  const uint64_t w = static_cast<uint64_t>(image.width);
  const uint64_t c = static_cast<uint64_t>(image.channels);
  const uint64_t max = std::numeric_limits<size_t>::max();
  if (w > max / h || w * h > max / c || w * h * c != image.pixels.size()) {
    throw UsageError(where + "image of " + std::to_string(image.width) + " x " + std::to_string(image.height) +
                     " x " + std::to_string(image.channels) + " holds " + std::to_string(image.pixels.size()) +
                     " bytes, not width * height * channels");
  }
  return static_cast<size_t>(w * h * c);
}

// ------------------------------------------------------------------ JPEG

// libjpeg error state. `mgr` comes first: libjpeg hands the callbacks
// cinfo->err, a pointer to it, which is cast back to the whole struct.
struct JpegErrorState {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
  bool warning;  // the failure was a libjpeg warning (corrupt data)
};

JpegErrorState* error_state(j_common_ptr cinfo) { return reinterpret_cast<JpegErrorState*>(cinfo->err); }

void on_jpeg_error(j_common_ptr cinfo) {
  JpegErrorState* state = error_state(cinfo);
  (*cinfo->err->format_message)(cinfo, state->message);
  std::longjmp(state->jump, 1);
}

// msg_level < 0: a warning, i.e. corrupt data libjpeg would paper over. Fail at
// once. Levels >= 0 are trace messages: ignore them.
void on_jpeg_message(j_common_ptr cinfo, int msg_level) {
  if (msg_level >= 0) return;
  JpegErrorState* state = error_state(cinfo);
  (*cinfo->err->format_message)(cinfo, state->message);
  state->warning = true;
  std::longjmp(state->jump, 1);
}

void discard_jpeg_output(j_common_ptr) {}  // never print to stderr

void init_jpeg_errors(JpegErrorState* state) {
  jpeg_std_error(&state->mgr);
  state->mgr.error_exit = on_jpeg_error;
  state->mgr.emit_message = on_jpeg_message;
  state->mgr.output_message = discard_jpeg_output;
  state->message[0] = '\0';
  state->warning = false;
}

// Bounds the work a hostile progressive JPEG can cause (called by libjpeg).
void limit_jpeg_scans(j_common_ptr cinfo) {
  if (!cinfo->is_decompressor) return;
  if (reinterpret_cast<j_decompress_ptr>(cinfo)->input_scan_number > kMaxJpegScans) {
    JpegErrorState* state = error_state(cinfo);
    std::snprintf(state->message, sizeof(state->message), "more than %d scans; refusing a possibly malicious file",
                  kMaxJpegScans);
    std::longjmp(state->jump, 1);
  }
}

enum class JpegColor { kGrey, kRgb, kCmyk, kOther };

// Everything is plain data: safe to longjmp over.
struct JpegDecoder {
  jpeg_decompress_struct cinfo;
  JpegErrorState error;
  jpeg_progress_mgr progress;
  JpegColor color;
  int64_t width, height, channels;
};

// Reads the header and fixes the output colour space and size. False on a
// libjpeg error or warning (message in dec->error).
bool read_jpeg_header(JpegDecoder* dec, const uint8_t* data, size_t size) {
  jpeg_decompress_struct* cinfo = &dec->cinfo;
  cinfo->err = &dec->error.mgr;
  init_jpeg_errors(&dec->error);
  if (setjmp(dec->error.jump)) return false;
  jpeg_create_decompress(cinfo);
  dec->progress.progress_monitor = limit_jpeg_scans;
  cinfo->progress = &dec->progress;
  jpeg_mem_src(cinfo, data, static_cast<unsigned long>(size));
  jpeg_read_header(cinfo, /*require_image=*/TRUE);
  switch (cinfo->jpeg_color_space) {
    case JCS_GRAYSCALE:
      dec->color = JpegColor::kGrey;
      cinfo->out_color_space = JCS_GRAYSCALE;
      break;
    case JCS_YCbCr:
    case JCS_RGB:
      dec->color = JpegColor::kRgb;
      cinfo->out_color_space = JCS_RGB;
      break;
    case JCS_CMYK:
    case JCS_YCCK:
      dec->color = JpegColor::kCmyk;
      return true;
    default:
      dec->color = JpegColor::kOther;
      return true;
  }
  jpeg_calc_output_dimensions(cinfo);
  dec->width = cinfo->output_width;
  dec->height = cinfo->output_height;
  dec->channels = cinfo->output_components;
  return true;
}

// Decodes the pixels, appending row after row to `out`, whose capacity the caller
// has reserved (so growing it neither reallocates nor throws). Memory is touched
// only as rows arrive: a small file that claims a huge size and then ends stays
// cheap. `out` is not a local here, so longjmp skips no destructor.
bool read_jpeg_pixels(JpegDecoder* dec, std::vector<uint8_t>* out) {
  jpeg_decompress_struct* cinfo = &dec->cinfo;
  if (setjmp(dec->error.jump)) return false;
  jpeg_start_decompress(cinfo);
  if (static_cast<int64_t>(cinfo->output_width) != dec->width ||
      static_cast<int64_t>(cinfo->output_height) != dec->height ||
      static_cast<int64_t>(cinfo->output_components) != dec->channels) {
    std::snprintf(dec->error.message, sizeof(dec->error.message), "output size changed after the header");
    return false;
  }
  const size_t stride = static_cast<size_t>(dec->width * dec->channels);
  while (cinfo->output_scanline < cinfo->output_height) {
    out->resize(out->size() + stride);
    JSAMPROW row = out->data() + out->size() - stride;
    if (jpeg_read_scanlines(cinfo, &row, /*max_lines=*/1) != 1) {
      // Cannot happen with a memory source (it never suspends); do not spin.
      std::snprintf(dec->error.message, sizeof(dec->error.message), "decoder made no progress");
      return false;
    }
  }
  jpeg_finish_decompress(cinfo);
  return true;
}

// Frees libjpeg's memory on every path (safe on a never-created object).
struct JpegDecoderCleanup {
  JpegDecoder* dec;
  ~JpegDecoderCleanup() { jpeg_destroy_decompress(&dec->cinfo); }
};

[[noreturn]] void fail_jpeg(const std::string& what, const JpegErrorState& error) {
  fail(what, std::string(error.warning ? "corrupt or truncated JPEG data (libjpeg warning: "
                                       : "invalid, truncated or unsupported JPEG data (libjpeg: ") +
                 error.message + ")");
}

Image decode_jpeg(const uint8_t* data, size_t size, const std::string& what, const ImageLimits& limits) {
  JpegDecoder dec{};
  JpegDecoderCleanup cleanup{&dec};
  if (!read_jpeg_header(&dec, data, size)) fail_jpeg(what, dec.error);
  if (dec.color == JpegColor::kCmyk) {
    fail(what, "CMYK/YCCK JPEG is not supported (only greyscale and YCbCr/RGB JPEGs are); convert it to RGB");
  }
  if (dec.color == JpegColor::kOther) {
    fail(what, "JPEG with " + std::to_string(dec.cinfo.num_components) +
                   " colour components of unknown colour space is not supported");
  }
  check_limits(dec.width, dec.height, limits, "JPEG", what);
  Image image;
  image.height = dec.height;
  image.width = dec.width;
  image.channels = dec.channels;
  image.pixels.reserve(static_cast<size_t>(dec.height * dec.width * dec.channels));
  if (!read_jpeg_pixels(&dec, &image.pixels)) fail_jpeg(what, dec.error);
  return image;
}

// Destination manager writing into a malloc'ed buffer that grows by doubling.
struct JpegSink {
  jpeg_destination_mgr mgr;  // first: libjpeg's cinfo->dest points here
  unsigned char* buffer;
  size_t capacity;
  size_t size;
};

JpegSink* sink_of(j_compress_ptr cinfo) { return reinterpret_cast<JpegSink*>(cinfo->dest); }

void sink_init(j_compress_ptr cinfo) {
  JpegSink* sink = sink_of(cinfo);
  sink->buffer = static_cast<unsigned char*>(std::malloc(kJpegSinkInitialBytes));
  if (sink->buffer == nullptr) ERREXIT(cinfo, JERR_OUT_OF_MEMORY);
  sink->capacity = kJpegSinkInitialBytes;
  sink->mgr.next_output_byte = sink->buffer;
  sink->mgr.free_in_buffer = sink->capacity;
}

// Called when the buffer is full (libjpeg's contract: all of it is used).
boolean sink_grow(j_compress_ptr cinfo) {
  JpegSink* sink = sink_of(cinfo);
  const size_t grown = sink->capacity * 2;
  auto* bigger = static_cast<unsigned char*>(std::realloc(sink->buffer, grown));
  if (bigger == nullptr) ERREXIT(cinfo, JERR_OUT_OF_MEMORY);
  sink->buffer = bigger;
  sink->mgr.next_output_byte = bigger + sink->capacity;
  sink->mgr.free_in_buffer = grown - sink->capacity;
  sink->capacity = grown;
  return TRUE;
}

void sink_term(j_compress_ptr cinfo) {
  JpegSink* sink = sink_of(cinfo);
  sink->size = sink->capacity - sink->mgr.free_in_buffer;
}

struct JpegEncoder {
  jpeg_compress_struct cinfo;
  JpegErrorState error;
  JpegSink sink;
};

bool write_jpeg(JpegEncoder* enc, const uint8_t* pixels, int width, int height, int channels, int quality,
                bool subsample_chroma) {
  jpeg_compress_struct* cinfo = &enc->cinfo;
  cinfo->err = &enc->error.mgr;
  init_jpeg_errors(&enc->error);
  if (setjmp(enc->error.jump)) return false;
  jpeg_create_compress(cinfo);
  enc->sink.mgr.init_destination = sink_init;
  enc->sink.mgr.empty_output_buffer = sink_grow;
  enc->sink.mgr.term_destination = sink_term;
  cinfo->dest = &enc->sink.mgr;
  cinfo->image_width = static_cast<JDIMENSION>(width);
  cinfo->image_height = static_cast<JDIMENSION>(height);
  cinfo->input_components = channels;
  cinfo->in_color_space = channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_set_defaults(cinfo);  // YCbCr with 2x2 luma sampling (4:2:0) for RGB input
  jpeg_set_quality(cinfo, quality, /*force_baseline=*/TRUE);
  if (channels == 3 && !subsample_chroma) {
    cinfo->comp_info[0].h_samp_factor = 1;
    cinfo->comp_info[0].v_samp_factor = 1;
  }
  jpeg_start_compress(cinfo, /*write_all_tables=*/TRUE);
  const size_t stride = static_cast<size_t>(width) * static_cast<size_t>(channels);
  while (cinfo->next_scanline < cinfo->image_height) {
    JSAMPROW row = const_cast<JSAMPLE*>(pixels + static_cast<size_t>(cinfo->next_scanline) * stride);
    jpeg_write_scanlines(cinfo, &row, /*num_lines=*/1);
  }
  jpeg_finish_compress(cinfo);
  return true;
}

struct JpegEncoderCleanup {
  JpegEncoder* enc;
  ~JpegEncoderCleanup() {
    jpeg_destroy_compress(&enc->cinfo);
    std::free(enc->sink.buffer);
  }
};

// ------------------------------------------------------------------ PNG

// Signature (8 bytes) + IHDR chunk (8 + 13 + 4 bytes): IHDR must come first.
constexpr size_t kPngEndOfIhdr = 33;

// All plain data: safe to longjmp over.
struct PngDecoder {
  png_structp png;
  png_infop info;
  std::jmp_buf jump;
  char message[256];
  const uint8_t* data;
  size_t size;
  size_t offset;
  const ImageLimits* limits;
  bool too_large;
  png_uint_32 width, height;
  int passes;
  int channels_read;  // per pixel as libpng delivers rows: 1 or 3 (alpha stripped)
  size_t row_bytes;
};

PngDecoder* png_decoder_of(png_structp png) { return static_cast<PngDecoder*>(png_get_error_ptr(png)); }

void on_png_error(png_structp png, png_const_charp message) {
  PngDecoder* dec = png_decoder_of(png);
  std::snprintf(dec->message, sizeof(dec->message), "%s", message);
  std::longjmp(dec->jump, 1);
}

// libpng warnings are about ancillary data (a bad iCCP profile, a CRC error in a
// text chunk, ...): the pixels are intact, so they are ignored, not printed.
void on_png_warning(png_structp, png_const_charp) {}

void read_png_bytes(png_structp png, png_bytep out, png_size_t length) {
  PngDecoder* dec = static_cast<PngDecoder*>(png_get_io_ptr(png));
  // Reading past the IHDR chunk: libpng has checked its CRC and stored the size.
  // Stop right here if the image is too large, whatever follows.
  if (dec->offset >= kPngEndOfIhdr && !dec->too_large &&
      over_limits(png_get_image_width(png, dec->info), png_get_image_height(png, dec->info), *dec->limits)) {
    dec->too_large = true;
    png_error(png, "image too large");
  }
  if (length > dec->size - dec->offset) png_error(png, "unexpected end of data (file truncated)");
  std::memcpy(out, dec->data + dec->offset, length);
  dec->offset += length;
}

// Creates the libpng objects, reads the chunks up to the image data, checks the
// size and sets up the transformations to 8-bit grey or RGB. dec->too_large:
// stopped at the limits.
bool read_png_header(PngDecoder* dec) {
  if (setjmp(dec->jump)) return false;
  dec->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, dec, on_png_error, on_png_warning);
  if (dec->png != nullptr) dec->info = png_create_info_struct(dec->png);
  if (dec->png == nullptr || dec->info == nullptr) {
    std::snprintf(dec->message, sizeof(dec->message), "cannot create the decoder (out of memory?)");
    return false;
  }
  png_structp png = dec->png;
  png_infop info = dec->info;
  png_set_read_fn(png, dec, read_png_bytes);
  // Our limits apply (checked as soon as IHDR is read); libpng's own are lifted to the
  // format's maximum so that they never decide first.
  png_set_user_limits(png, PNG_UINT_31_MAX, PNG_UINT_31_MAX);
  // Skip every ancillary chunk but tRNS unread (only its CRC is checked, in small
  // steps). None of them changes the pixels we return, and libpng 1.6.39 allocates
  // and zeroes a text chunk's declared length (up to 2 GiB, its chunk-size limit
  // notwithstanding) before reading it: a 60-byte file could cost 2 GiB.
  png_set_keep_unknown_chunks(png, PNG_HANDLE_CHUNK_NEVER, /*chunk_list=*/nullptr, /*num_chunks=*/-1);
  png_read_info(png, info);
  int bit_depth = 0;
  int color_type = 0;
  png_get_IHDR(png, info, &dec->width, &dec->height, &bit_depth, &color_type, nullptr, nullptr, nullptr);
  if (over_limits(dec->width, dec->height, *dec->limits)) {
    dec->too_large = true;
    return true;
  }
  if (color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color_type == PNG_COLOR_TYPE_GRAY && bit_depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (bit_depth == 16) png_set_scale_16(png);
  png_set_strip_alpha(png);  // also the alpha that palette expansion makes of tRNS
  dec->passes = png_set_interlace_handling(png);
  png_read_update_info(png, info);
  dec->channels_read = png_get_channels(png, info);
  dec->row_bytes = png_get_rowbytes(png, info);
  return true;
}

// Reads all rows into `out` (capacity reserved by the caller, as for JPEG), then
// the chunks after them. Non-interlaced rows are appended as they arrive; an
// interlaced image is filled in several passes, so it needs all rows at once.
bool read_png_pixels(PngDecoder* dec, std::vector<uint8_t>* out) {
  if (setjmp(dec->jump)) return false;
  if (dec->passes == 1) {
    for (png_uint_32 y = 0; y < dec->height; ++y) {
      out->resize(out->size() + dec->row_bytes);
      png_read_row(dec->png, out->data() + out->size() - dec->row_bytes, /*display_row=*/nullptr);
    }
  } else {
    out->resize(static_cast<size_t>(dec->height) * dec->row_bytes);
    for (int pass = 0; pass < dec->passes; ++pass) {
      for (png_uint_32 y = 0; y < dec->height; ++y) {
        png_read_row(dec->png, out->data() + static_cast<size_t>(y) * dec->row_bytes, /*display_row=*/nullptr);
      }
    }
  }
  png_read_end(dec->png, dec->info);
  return true;
}

struct PngDecoderCleanup {
  PngDecoder* dec;
  ~PngDecoderCleanup() {
    if (dec->png != nullptr) png_destroy_read_struct(&dec->png, &dec->info, nullptr);
  }
};

Image decode_png(const uint8_t* data, size_t size, const std::string& what, const ImageLimits& limits) {
  PngDecoder dec{};
  PngDecoderCleanup cleanup{&dec};
  dec.data = data;
  dec.size = size;
  dec.limits = &limits;
  const bool ok = read_png_header(&dec);
  if (dec.too_large) {
    check_limits(png_get_image_width(dec.png, dec.info), png_get_image_height(dec.png, dec.info), limits, "PNG", what);
  }
  if (!ok) fail(what, std::string("invalid or truncated PNG data (libpng: ") + dec.message + ")");
  const size_t channels = static_cast<size_t>(dec.channels_read);
  const size_t width = dec.width;
  const size_t height = dec.height;
  if ((channels != 1 && channels != 3) || dec.row_bytes != width * channels) {
    fail(what, "unexpected PNG row layout after conversion to 8 bits (" + std::to_string(channels) + " channels, " +
                   std::to_string(dec.row_bytes) + " bytes per row)");
  }
  Image image;
  image.height = static_cast<int64_t>(height);
  image.width = static_cast<int64_t>(width);
  image.channels = static_cast<int64_t>(channels);
  image.pixels.reserve(height * dec.row_bytes);
  if (!read_png_pixels(&dec, &image.pixels)) {
    fail(what, std::string("corrupt or truncated PNG data (libpng: ") + dec.message + ")");
  }
  return image;
}

}  // namespace

ImageFormat detect_image_format(const uint8_t* data, size_t size) {
  if (data == nullptr) return ImageFormat::kUnknown;
  if (size >= sizeof(kPngMagic) && std::memcmp(data, kPngMagic, sizeof(kPngMagic)) == 0) return ImageFormat::kPng;
  if (size >= sizeof(kJpegMagic) && std::memcmp(data, kJpegMagic, sizeof(kJpegMagic)) == 0) return ImageFormat::kJpeg;
  return ImageFormat::kUnknown;
}

const char* image_format_name(ImageFormat format) {
  switch (format) {
    case ImageFormat::kJpeg: return "JPEG";
    case ImageFormat::kPng: return "PNG";
    case ImageFormat::kUnknown: break;
  }
  return "unknown";
}

Image decode_image(const uint8_t* data, size_t size, const std::string& what, const ImageLimits& limits) {
  if (size == 0) fail(what, "empty input (0 bytes)");
  if (data == nullptr) fail(what, "no data (null pointer for " + std::to_string(size) + " bytes)");
  switch (detect_image_format(data, size)) {
    case ImageFormat::kJpeg: return decode_jpeg(data, size, what, limits);
    case ImageFormat::kPng: return decode_png(data, size, what, limits);
    case ImageFormat::kUnknown: break;
  }
  fail(what, "unknown image format (supported: JPEG, PNG; detected from the leading bytes); " +
                 std::to_string(size) + " bytes starting " + hex_preview(data, size));
}

Image decode_image(const std::vector<uint8_t>& bytes, const std::string& what, const ImageLimits& limits) {
  return decode_image(bytes.data(), bytes.size(), what, limits);
}

Image convert_channels(const Image& image, int64_t channels) {
  if (channels != 1 && channels != 3) {
    throw UsageError("convert_channels: channels must be 1 (grey) or 3 (RGB), got " + std::to_string(channels));
  }
  const size_t bytes = checked_byte_count(image, "convert_channels");
  if (image.channels == channels) return image;
  Image out;
  out.height = image.height;
  out.width = image.width;
  out.channels = channels;
  const size_t count = bytes / static_cast<size_t>(image.channels);
  const uint8_t* in = image.pixels.data();
  if (channels == 3) {
    out.pixels.resize(count * 3);
    for (size_t i = 0; i < count; ++i) {
      out.pixels[3 * i] = out.pixels[3 * i + 1] = out.pixels[3 * i + 2] = in[i];
    }
  } else {
    out.pixels.resize(count);
    for (size_t i = 0; i < count; ++i) {
      const uint32_t y = kLumaR * in[3 * i] + kLumaG * in[3 * i + 1] + kLumaB * in[3 * i + 2] + kLumaRound;
      out.pixels[i] = static_cast<uint8_t>(y >> kLumaShift);
    }
  }
  return out;
}

std::vector<uint8_t> encode_png(const Image& image) {
  checked_byte_count(image, "encode_png");
  if (image.width > kMaxPngDimension || image.height > kMaxPngDimension) {
    throw UsageError("encode_png: PNG dimensions are limited to " + std::to_string(kMaxPngDimension) + ", got " +
                     std::to_string(image.width) + " x " + std::to_string(image.height));
  }
  png_image png{};
  png.version = PNG_IMAGE_VERSION;
  png.width = static_cast<png_uint_32>(image.width);
  png.height = static_cast<png_uint_32>(image.height);
  png.format = image.channels == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
  // PNG_IMAGE_PNG_SIZE_MAX is enough for any content, so one pass suffices.
  png_alloc_size_t size = PNG_IMAGE_PNG_SIZE_MAX(png);
  std::vector<uint8_t> out(size);
  const int ok = png_image_write_to_memory(&png, out.data(), &size, /*convert_to_8_bit=*/0, image.pixels.data(),
                                           /*row_stride=*/0, /*colormap=*/nullptr);
  const std::string message = png.message;
  png_image_free(&png);
  if (ok == 0) throw DataError("encode_png: libpng failed: " + message);
  out.resize(size);
  return out;
}

std::vector<uint8_t> encode_jpeg(const Image& image, int quality, bool subsample_chroma) {
  checked_byte_count(image, "encode_jpeg");
  if (quality < 1 || quality > 100) {
    throw UsageError("encode_jpeg: quality must be in 1..100, got " + std::to_string(quality));
  }
  if (image.width > kMaxJpegDimension || image.height > kMaxJpegDimension) {
    throw UsageError("encode_jpeg: JPEG dimensions are limited to " + std::to_string(kMaxJpegDimension) + ", got " +
                     std::to_string(image.width) + " x " + std::to_string(image.height));
  }
  JpegEncoder enc{};
  JpegEncoderCleanup cleanup{&enc};
  if (!write_jpeg(&enc, image.pixels.data(), static_cast<int>(image.width), static_cast<int>(image.height),
                  static_cast<int>(image.channels), quality, subsample_chroma)) {
    throw DataError(std::string("encode_jpeg: libjpeg failed: ") + enc.error.message);
  }
  return std::vector<uint8_t>(enc.sink.buffer, enc.sink.buffer + enc.sink.size);
}

}  // namespace liondg
