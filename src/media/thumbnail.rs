//! Thumbnail generation with the `image` crate: decode (with limits, so a small file that
//! claims a huge picture is refused before any allocation), scale to fit or crop to fill,
//! never enlarge, and encode as PNG (sources that may have transparency) or JPEG.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, ImageReader, Limits, imageops::FilterType};
use weft_protocol::media::Method;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ThumbError {
    #[error("not an image weft can make thumbnails of")]
    NotAnImage,
    #[error("the image is too large to make thumbnails of")]
    TooLarge,
    #[error("could not encode the thumbnail: {0}")]
    Encode(String),
}

/// Raster formats thumbnails are made of, with their content types.
pub fn sniff(bytes: &[u8]) -> Option<(ImageFormat, &'static str)> {
    let format = image::guess_format(bytes).ok()?;
    let ct = match format {
        ImageFormat::Png => "image/png",
        ImageFormat::Jpeg => "image/jpeg",
        ImageFormat::Gif => "image/gif",
        ImageFormat::WebP => "image/webp",
        _ => return None,
    };
    Some((format, ct))
}

/// Makes a thumbnail of `bytes` for a `width`×`height` box; returns the bytes and their
/// content type. Blocking (CPU): call from a blocking thread.
pub fn generate(
    bytes: &[u8],
    width: u32,
    height: u32,
    method: Method,
    max_pixels: u64,
) -> Result<(Vec<u8>, &'static str), ThumbError> {
    let (format, _) = sniff(bytes).ok_or(ThumbError::NotAnImage)?;
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let side = u32::try_from(max_pixels.min(u64::from(u32::MAX))).unwrap_or(u32::MAX);
    let mut limits = Limits::default();
    limits.max_image_width = Some(side.min(65_535));
    limits.max_image_height = Some(side.min(65_535));
    limits.max_alloc = Some(max_pixels.saturating_mul(4));
    reader.limits(limits);
    let (w, h) = reader
        .into_dimensions()
        .map_err(|_| ThumbError::NotAnImage)?;
    if u64::from(w) * u64::from(h) > max_pixels {
        return Err(ThumbError::TooLarge);
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(4).max(1 << 20));
    reader.limits(limits);
    let img = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => ThumbError::TooLarge,
        _ => ThumbError::NotAnImage,
    })?;
    let thumb = resize(img, width.max(1), height.max(1), method);
    let (out_format, ct) = if matches!(format, ImageFormat::Jpeg) {
        (ImageFormat::Jpeg, "image/jpeg")
    } else {
        (ImageFormat::Png, "image/png")
    };
    let thumb = if out_format == ImageFormat::Jpeg {
        DynamicImage::ImageRgb8(thumb.to_rgb8())
    } else {
        thumb
    };
    let mut out = Cursor::new(Vec::new());
    thumb
        .write_to(&mut out, out_format)
        .map_err(|e| ThumbError::Encode(e.to_string()))?;
    Ok((out.into_inner(), ct))
}

fn resize(img: DynamicImage, width: u32, height: u32, method: Method) -> DynamicImage {
    let (w, h) = (img.width(), img.height());
    match method {
        // Fits already: keep the original size.
        Method::Scale if w <= width && h <= height => img,
        Method::Scale => img.resize(width, height, FilterType::Triangle),
        Method::Crop => {
            // Never enlarge: crop to the box's aspect ratio within the original.
            let (tw, th) = if w < width || h < height {
                let scale = f64::min(
                    f64::from(w) / f64::from(width),
                    f64::from(h) / f64::from(height),
                );
                (
                    ((f64::from(width) * scale) as u32).max(1),
                    ((f64::from(height) * scale) as u32).max(1),
                )
            } else {
                (width, height)
            };
            img.resize_to_fill(tw, th, FilterType::Triangle)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbaImage::from_fn(w, h, |x, y| image::Rgba([x as u8, y as u8, 0, 255]));
        let mut out = Cursor::new(Vec::new());
        DynamicImage::ImageRgba8(img)
            .write_to(&mut out, ImageFormat::Png)
            .unwrap();
        out.into_inner()
    }

    fn dims(bytes: &[u8]) -> (u32, u32) {
        let img = image::load_from_memory(bytes).unwrap();
        (img.width(), img.height())
    }

    #[test]
    fn scale_and_crop() {
        let src = png(400, 200);
        // (box, method, expected size)
        let cases = [
            ((100, 100), Method::Scale, (100, 50)),
            ((800, 600), Method::Scale, (400, 200)), // never enlarged
            ((96, 96), Method::Crop, (96, 96)),
            ((32, 32), Method::Crop, (32, 32)),
            ((1000, 1000), Method::Crop, (200, 200)), // box aspect, within the original
        ];
        for ((w, h), m, want) in cases {
            let (out, ct) = generate(&src, w, h, m, 10_000_000).unwrap();
            assert_eq!(ct, "image/png");
            assert_eq!(dims(&out), want, "{w}x{h} {m:?}");
        }
    }

    #[test]
    fn refuses_what_it_should() {
        assert_eq!(
            generate(b"not an image", 32, 32, Method::Crop, 1_000_000),
            Err(ThumbError::NotAnImage)
        );
        // More pixels than allowed.
        assert_eq!(
            generate(&png(100, 100), 32, 32, Method::Crop, 5_000),
            Err(ThumbError::TooLarge)
        );
        // A PNG header claiming 100000×100000 pixels, with no data behind it.
        let mut bomb = png(1, 1);
        bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        assert!(generate(&bomb, 32, 32, Method::Crop, 32_000_000).is_err());
        // A truncated image.
        let src = png(50, 50);
        assert!(generate(&src[..src.len() / 2], 32, 32, Method::Crop, 1_000_000).is_err());
    }
}
