<?php
/**
 * Whether the matomo_archive_claim extension is there, and the one message that says what to do
 * when it is not.
 */

declare(strict_types=1);

namespace Piwik\Plugins\ArchiveClaim\Lib;

final class Extension
{
    public const NAME = 'matomo_archive_claim';

    public static function loaded(): bool
    {
        return extension_loaded(self::NAME);
    }

    public static function missingMessage(): string
    {
        return 'The matomo_archive_claim PHP extension is not loaded in this PHP (' . PHP_BINARY . '). '
            . 'Archiving works as without the ArchiveClaim plugin: orphaned invalidations wait for '
            . 'archive_failure_recovery_timeout. Load it with extension=matomo_archive_claim.so in php.ini '
            . '(see the README of matomo_archive_claim).';
    }
}
