-- 004_img2img.sql - image to image: the strength and the init image of a generation.
-- The image is identified by the SHA-256 of its decoded 8-bit RGB pixels (the file may be
-- moved or re-encoded); a copy is kept under images/ beside the database, named by
-- that hash, so replay works after the original is gone.
ALTER TABLE generations ADD COLUMN strength REAL NOT NULL DEFAULT 0;   -- 0: text to image
ALTER TABLE generations ADD COLUMN init_image_sha256 TEXT;             -- NULL: text to image
ALTER TABLE generations ADD COLUMN init_image TEXT;                    -- the path given
