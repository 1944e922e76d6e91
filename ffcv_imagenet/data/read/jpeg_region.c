/* Decodes only the part of a JPEG that a crop covers, with libjpeg(-turbo)'s own API.
 *
 * A random-resized crop covers on average about half of an image. The rows below the
 * crop are never entropy-decoded; the rows above it are entropy-decoded but skipped
 * without IDCT, upsampling or colour conversion (jpeg_skip_scanlines); the columns
 * left and right of it are skipped the same way (jpeg_crop_scanline). libjpeg-turbo
 * 2.1 (Debian 12, Ubuntu 22.04) has both calls; TurboJPEG's cropping API only came in
 * 3.0, which is why this is not a call through ffcv's libturbojpeg.
 *
 * The region decoded around the crop keeps one iMCU (the chroma subsampling's block
 * of 8, 16 or 32 output pixels) of margin on every side, so that the fancy
 * upsampling of the pixels inside the crop sees the same neighbours as in a decode of
 * the whole frame: the crop's pixels equal the full decode's (tests/test_jpeg_region.py).
 *
 * The decoder (decoders.py) calls decode_region from numba-compiled code through
 * ctypes (jpeg_region.py); this file is built as the extension module
 * ffcv_imagenet.data.read._jpeg_region only so that setuptools and auditwheel carry it
 * (and libjpeg) in the wheel.
 */
#include <Python.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <setjmp.h>
#include <jpeglib.h>

struct error_manager {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
};

/* One decompressor per thread, created on first use and reused: creating one costs
   its memory pools and tables for every image. */
struct context {
    struct jpeg_decompress_struct cinfo;
    struct error_manager error;
    int ready;
};

static __thread struct context thread_context;

#define ROWS_PER_CALL 16

static void on_error(j_common_ptr cinfo)
{
    longjmp(((struct error_manager *)cinfo->err)->jump, 1);
}

/* corrupt-data warnings would print to stderr from every decoding thread */
static void on_message(j_common_ptr cinfo) { (void)cinfo; }

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* The failure path: the crop itself, black, so that the caller's resize reads only
   memory that was written (and never outside dst). */
static int fail(uint8_t *dst, uint64_t capacity, int64_t top, int64_t left,
                int64_t crop_h, int64_t crop_w, int64_t *geometry, int code)
{
    uint64_t bytes = (uint64_t)crop_h * (uint64_t)crop_w * 3;
    if (bytes > capacity) {
        crop_h = crop_w = 0;
        bytes = 0;
    }
    memset(dst, 0, bytes);
    geometry[0] = top;
    geometry[1] = left;
    geometry[2] = crop_h;
    geometry[3] = crop_w;
    return code;
}

/* Decodes, at scale 1/denom (1, 2, 4 or 8), the rows and columns of the JPEG at
 * src[0:size] that cover the crop of crop_h x crop_w pixels at (top, left), all in
 * pixels of the frame decoded at that scale; full != 0 decodes the whole frame.
 *
 * Writes rows [y0, y0 + rows) x columns [x0, x0 + cols) of that frame to dst, RGB,
 * row after row (stride cols * 3 bytes), and geometry = {y0, x0, rows, cols}; the
 * region always contains the crop. Returns 0; on a JPEG libjpeg cannot decode, a crop
 * outside the frame or a region larger than capacity bytes, it returns -1, -2 or -3,
 * and dst holds the crop in black (geometry = {top, left, crop_h, crop_w}).
 */
int decode_region(const uint8_t *src, uint64_t size, uint8_t *dst, uint64_t capacity,
                  int64_t denom, int64_t top, int64_t left, int64_t crop_h,
                  int64_t crop_w, int64_t *geometry, int64_t full)
{
    struct context *ctx = &thread_context;
    struct jpeg_decompress_struct *cinfo = &ctx->cinfo;
    if (!ctx->ready) {
        cinfo->err = jpeg_std_error(&ctx->error.pub);
        ctx->error.pub.error_exit = on_error;
        ctx->error.pub.output_message = on_message;
        jpeg_create_decompress(cinfo);
        ctx->ready = 1;
    }
    if (setjmp(ctx->error.jump)) {
        jpeg_abort_decompress(cinfo);  /* keeps the decompressor for the next image */
        return fail(dst, capacity, top, left, crop_h, crop_w, geometry, -1);
    }
    jpeg_mem_src(cinfo, src, (unsigned long)size);
    jpeg_read_header(cinfo, TRUE);
    cinfo->scale_num = 1;
    cinfo->scale_denom = (unsigned int)denom;
    cinfo->out_color_space = JCS_RGB;
    /* what ffcv's imdecode asks TurboJPEG for (TJFLAG_FASTDCT); fancy upsampling on */
    cinfo->dct_method = JDCT_IFAST;
    jpeg_start_decompress(cinfo);

    int64_t height = cinfo->output_height, width = cinfo->output_width;
    int64_t y0 = 0, y1 = height, x0 = 0, x1 = width;
    if (!full) {
        if (top < 0 || left < 0 || crop_h < 1 || crop_w < 1 ||
            top + crop_h > height || left + crop_w > width) {
            jpeg_abort_decompress(cinfo);
            return fail(dst, capacity, top, left, crop_h, crop_w, geometry, -2);
        }
        int64_t margin_y = (int64_t)cinfo->max_v_samp_factor * cinfo->min_DCT_scaled_size;
        int64_t margin_x = (int64_t)cinfo->max_h_samp_factor * cinfo->min_DCT_scaled_size;
        y0 = max64(0, top - margin_y);
        y1 = min64(height, top + crop_h + margin_y);
        x0 = max64(0, left - margin_x);
        x1 = min64(width, left + crop_w + margin_x);
    }
    JDIMENSION column = (JDIMENSION)x0, columns = (JDIMENSION)(x1 - x0);
    if (x0 > 0 || x1 < width)
        jpeg_crop_scanline(cinfo, &column, &columns);  /* widens to whole iMCUs */
    uint64_t stride = (uint64_t)columns * 3;
    if ((uint64_t)(y1 - y0) * stride > capacity) {
        jpeg_abort_decompress(cinfo);
        return fail(dst, capacity, top, left, crop_h, crop_w, geometry, -3);
    }
    if (y0 > 0)
        jpeg_skip_scanlines(cinfo, (JDIMENSION)y0);
    /* several rows per call: one row at a time costs libjpeg's per-call work per row */
    JSAMPROW rows[ROWS_PER_CALL];
    while ((int64_t)cinfo->output_scanline < y1) {
        int64_t first = (int64_t)cinfo->output_scanline;
        int64_t count = min64(ROWS_PER_CALL, y1 - first);
        for (int64_t r = 0; r < count; r++)
            rows[r] = dst + (uint64_t)(first + r - y0) * stride;
        jpeg_read_scanlines(cinfo, rows, (JDIMENSION)count);
    }
    /* stopping early is the point: abort instead of reading the rest of the data */
    jpeg_abort_decompress(cinfo);
    geometry[0] = y0;
    geometry[1] = column;
    geometry[2] = y1 - y0;
    geometry[3] = columns;
    return 0;
}

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_jpeg_region",
    "decode_region() of jpeg_region.c, for ctypes (see ffcv_imagenet.data.read.jpeg_region)",
    -1, NULL,
};

PyMODINIT_FUNC PyInit__jpeg_region(void) { return PyModule_Create(&module); }
