/* shopify_hmac.c - the webhook signature check and the content key of a
 * delivery (include/atp/shopify.h), the only file that includes OpenSSL.
 *
 * Shopify signs each webhook with X-Shopify-Hmac-Sha256: the base64 of the
 * HMAC-SHA256 of the raw body under the app's secret. After a secret
 * rotation both the new and the previous secret are valid for a while, so a
 * signature is accepted under any configured secret. Each candidate is
 * computed and encoded, then compared with CRYPTO_memcmp, whose time does
 * not depend on where the bytes differ; every secret is tried whatever the
 * first gave, so the time does not say which one matched either.
 */
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <string.h>

#include "atp/assert.h"
#include "atp/shopify.h"

/* base64 of 32 bytes: 44 characters and the NUL EVP_EncodeBlock writes. */
#define SIGNATURE_B64_BYTES 44

bool atp_shopify_hmac_valid(const atp_shopify_config_t *config, const char *body,
                            size_t body_len, const char *signature,
                            size_t signature_len) {
  ATP_ASSERT(config && config->secret_count <= ATP_SHOPIFY_SECRETS_MAX);
  /* The length is public (every valid signature has it). */
  if (!signature || signature_len != SIGNATURE_B64_BYTES) return false;
  bool valid = false;
  for (uint32_t i = 0; i < config->secret_count; i++) {
    const char *secret = config->secrets[i];
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    if (!HMAC(EVP_sha256(), secret, (int)strlen(secret),
              (const unsigned char *)(body ? body : ""), body_len, mac, &mac_len) ||
        mac_len != 32)
      continue;
    unsigned char b64[SIGNATURE_B64_BYTES + 1];
    int n = EVP_EncodeBlock(b64, mac, 32);
    ATP_ASSERT(n == SIGNATURE_B64_BYTES);
    if (CRYPTO_memcmp(b64, signature, SIGNATURE_B64_BYTES) == 0) valid = true;
  }
  return valid;
}

void atp_shopify_content_key(atp_str_t topic, const char *body, size_t body_len,
                             uint8_t out[32]) {
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  unsigned int n = 0;
  bool ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) &&
            EVP_DigestUpdate(ctx, topic.ptr ? topic.ptr : "", topic.len) &&
            EVP_DigestUpdate(ctx, "", 1) &&
            EVP_DigestUpdate(ctx, body ? body : "", body_len) &&
            EVP_DigestFinal_ex(ctx, out, &n) && n == 32;
  EVP_MD_CTX_free(ctx);
  /* Only an allocation failure inside OpenSSL gets here: without a key the
   * backstop cannot work, and the webhook id still dedupes. */
  if (!ok) memset(out, 0, 32);
}
