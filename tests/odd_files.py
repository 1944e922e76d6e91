"""A corpus of broken and exotic image files, all named .JPEG, built from bytes in the
test itself: what a scraped or inherited ImageNet-like folder holds besides photos.

``bad_files`` are files no reader can turn into pixels (several of them make libtiff
print to stderr); ``good_files`` are valid images in unusual formats and modes that a
conversion must keep.
"""
import io
import struct
import zlib

import numpy as np
from PIL import Image

RNG_SEED = 7


def _encoded(image, fmt, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _photo(height=48, width=64):
    rng = np.random.default_rng(RNG_SEED)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), np.uint8))


def _png_chunk(kind, data):
    return (struct.pack('>I', len(data)) + kind + data
            + struct.pack('>I', zlib.crc32(kind + data)))


def png_declaring(width, height):
    """A PNG whose header declares ``width`` x ``height`` RGB pixels but holds almost none."""
    header = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    return (b'\x89PNG\r\n\x1a\n' + _png_chunk(b'IHDR', header)
            + _png_chunk(b'IDAT', zlib.compress(b'\0' * 64)) + _png_chunk(b'IEND', b''))


def dds_dx10(dxgi_format, side=16):
    """A DDS file with a DX10 header naming ``dxgi_format`` (93: B8G8R8X8_UNORM_SRGB,
    which Pillow identifies but cannot decode)."""
    pixel_format = struct.pack('<4I', 32, 0x4, int.from_bytes(b'DX10', 'little'), 0) + bytes(16)
    header = (struct.pack('<7I', 124, 0x1007, side, side, 0, 0, 0) + bytes(44) + pixel_format
              + struct.pack('<4I', 0x1000, 0, 0, 0) + bytes(4))
    dx10 = struct.pack('<5I', dxgi_format, 3, 0, 1, 0)
    return b'DDS ' + header + dx10 + bytes(side * side * 4)


def tiff_claiming_compression(value):
    """A deflate-compressed RGB TIFF whose compression tag is rewritten to ``value``:
    libtiff then fails on data it cannot decode, printing its complaint to fd 2."""
    data = bytearray(_encoded(_photo(), 'TIFF', compression='tiff_adobe_deflate'))
    assert data[:2] == b'II'
    ifd = struct.unpack('<I', data[4:8])[0]
    for entry in range(struct.unpack('<H', data[ifd:ifd + 2])[0]):
        at = ifd + 2 + 12 * entry
        if struct.unpack('<H', data[at:at + 2])[0] == 259:  # Compression, a SHORT
            data[at + 8:at + 10] = struct.pack('<H', value)
            return bytes(data)
    raise AssertionError('no compression tag')


def tiff_with_corrupt_strip():
    """A deflate TIFF whose strip is overwritten with zeros (libtiff: ZIPDecode error)."""
    data = _encoded(_photo(), 'TIFF', compression='tiff_adobe_deflate')
    image = Image.open(io.BytesIO(data))
    offset, length = image.tag_v2[273][0], image.tag_v2[279][0]
    return data[:offset + 2] + bytes(length - 2) + data[offset + length:]


def _half(data):
    return data[:len(data) // 2]


def bad_file_bytes():
    """name -> bytes of a file that cannot be read as an image."""
    photo = _photo()
    rng = np.random.default_rng(RNG_SEED)
    return {
        'truncated_jpeg': _half(_encoded(photo, 'JPEG', quality=95)),
        'truncated_png': _half(_encoded(photo, 'PNG')),
        'truncated_tiff': _half(_encoded(photo, 'TIFF')),
        'truncated_gif': _half(_encoded(photo, 'GIF')),
        'truncated_webp': _half(_encoded(photo, 'WEBP')),
        'zero_bytes': b'',
        'random_bytes': rng.integers(0, 256, 4096, np.uint8).tobytes(),
        'text': b'<html><body>404 Not Found</body></html>\n',
        'huge_declared_png': png_declaring(100_000, 100_000),
        'dds_dxgi_93': dds_dx10(93),
        'tiff_thunderscan': tiff_claiming_compression(32809),
        'tiff_sgilog': tiff_claiming_compression(34676),
        'tiff_jpeg_of_deflate': tiff_claiming_compression(7),
        'tiff_old_jpeg': tiff_claiming_compression(6),
        'tiff_corrupt_deflate': tiff_with_corrupt_strip(),
    }


# files whose decoding makes libtiff print to fd 2 (what must not reach the terminal)
CHATTY = ('tiff_thunderscan', 'tiff_sgilog', 'tiff_jpeg_of_deflate', 'tiff_old_jpeg',
          'tiff_corrupt_deflate')


def good_file_bytes():
    """name -> (bytes, (height, width)) of a valid image in an unusual format or mode."""
    photo = _photo()
    gray = photo.convert('L')
    sixteen = Image.fromarray((np.asarray(gray, np.uint16) * 257))
    shape = (photo.height, photo.width)
    return {
        'gray_jpeg': (_encoded(gray, 'JPEG'), shape),
        'cmyk_jpeg': (_encoded(photo.convert('CMYK'), 'JPEG'), shape),
        'palette_png': (_encoded(photo.convert('P', palette=Image.Palette.ADAPTIVE), 'PNG'),
                        shape),
        'sixteen_bit_png': (_encoded(sixteen, 'PNG'), shape),
        'sixteen_bit_tiff': (_encoded(sixteen, 'TIFF'), shape),
        'bilevel_tiff_group4': (_encoded(gray.convert('1'), 'TIFF', compression='group4'),
                                shape),
        'lzw_tiff': (_encoded(photo, 'TIFF', compression='tiff_lzw'), shape),
        'png_named_jpeg': (_encoded(photo, 'PNG'), shape),
        'rgba_webp': (_encoded(photo.convert('RGBA'), 'WEBP', lossless=True), shape),
        'gif': (_encoded(photo, 'GIF'), shape),
        'bmp': (_encoded(photo, 'BMP'), shape),
        'one_pixel': (_encoded(Image.new('RGB', (1, 1), (9, 9, 9)), 'PNG'), (1, 1)),
    }
