-- 006_inpaint.sql - inpainting: the mask of a generation (with init_image_sha256 and
-- strength of 004).  Identified, as the init image is, by the SHA-256 of its decoded 8-bit
-- RGB pixels, with a copy under images/ beside the database named by that hash.
ALTER TABLE generations ADD COLUMN mask_sha256 TEXT;   -- NULL: no mask
ALTER TABLE generations ADD COLUMN mask_image TEXT;    -- the path given
-- DPM++'s final sigma when the generation overrode the config (--final-sigmas): zero,
-- sigma_min or v0.25; NULL: the bundle's scheduler config.
ALTER TABLE generations ADD COLUMN final_sigmas TEXT;
